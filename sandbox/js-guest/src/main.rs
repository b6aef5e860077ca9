//! chatedge's JavaScript runtime: boa, built for wasm32-wasip1 and run by the sandbox in a fresh
//! wasmtime instance per execution. The program arrives as the second argument, after `--javascript` or `--typescript` (the sandbox keeps
//! the guest's stdin for the user's own input); `console.*` writes to stdout / stderr, an uncaught
//! error is printed to stderr as `Uncaught <error>` and ends the process with exit code 1.
//!
//! With `--typescript`, the program's types are stripped first (oxc, `ts_strip`), here
//! inside the guest, so that a program that breaks the parser traps this instance and nothing
//! else. A program that does not compile is reported on stderr and ends with
//! [`ts_strip::COMPILE_ERROR_EXIT`]; nothing of it runs.
//!
//! `wizer.initialize` builds the engine's realm ahead of time: the sandbox snapshots the module
//! after calling it, so each execution starts with the realm already made (~1.4 M instructions
//! saved per run). Without a snapshot, `main` builds it itself.

use std::cell::RefCell;
use std::io::Write;
use std::process::ExitCode;

use boa_engine::{Context, Source};
use boa_runtime::Console;

thread_local! {
    /// The realm `wizer.initialize` made; taken by the one `main` an instance runs.
    static PREPARED: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// A realm with `console` installed.
fn new_context() -> Result<Context, String> {
    let mut context = Context::default();
    Console::register_with_logger(boa_runtime::DefaultLogger, &mut context)
        .map_err(|error| format!("could not install console: {error}"))?;
    Ok(context)
}

/// Called once by the snapshot builder, never by an execution.
#[export_name = "wizer.initialize"]
pub extern "C" fn initialize() {
    if let Ok(context) = new_context() {
        PREPARED.with(|prepared| *prepared.borrow_mut() = Some(context));
    }
}

fn main() -> ExitCode {
    // `chatedge_js --javascript|--typescript <program>`: always two arguments, so a program that
    // happens to read like a flag is still a program.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (typescript, program) = match args.as_slice() {
        [mode, program] if mode == "--javascript" => (false, program.clone()),
        [mode, program] if mode == "--typescript" => (true, program.clone()),
        _ => {
            eprintln!("usage: chatedge_js --javascript|--typescript <program>");
            return ExitCode::from(2);
        }
    };
    let code = if typescript {
        match ts_strip::strip_types(&program) {
            Ok(js) => js,
            Err(messages) => {
                eprint!("{messages}");
                return ExitCode::from(ts_strip::COMPILE_ERROR_EXIT);
            }
        }
    } else {
        program
    };
    let prepared = PREPARED.with(|prepared| prepared.borrow_mut().take());
    let mut context = match prepared.map_or_else(new_context, Ok) {
        Ok(context) => context,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let evaluated = context.eval(Source::from_bytes(code.as_bytes()));
    // Promise jobs queued by the program (async functions, `.then`) run before it ends.
    let settled = evaluated.and_then(|_| context.run_jobs());
    let status = match settled {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let shown =
                error.try_native(&mut context).map(|native| native.to_string()).unwrap_or_else(|_| error.to_string());
            eprintln!("Uncaught {shown}");
            ExitCode::FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    status
}
