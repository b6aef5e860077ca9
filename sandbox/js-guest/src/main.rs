//! chatedge's JavaScript runtime: boa, built for wasm32-wasip1 and run by the sandbox in a fresh
//! wasmtime instance per execution. The program arrives as the first argument (the sandbox keeps
//! the guest's stdin for the user's own input); `console.*` writes to stdout / stderr, an uncaught
//! error is printed to stderr as `Uncaught <error>` and ends the process with exit code 1.

use std::io::Write;
use std::process::ExitCode;

use boa_engine::{Context, Source};
use boa_runtime::Console;

fn main() -> ExitCode {
    let Some(code) = std::env::args().nth(1) else {
        eprintln!("usage: chatedge_js <program>");
        return ExitCode::from(2);
    };
    let mut context = Context::default();
    if let Err(error) = Console::register_with_logger(boa_runtime::DefaultLogger, &mut context) {
        eprintln!("could not install console: {error}");
        return ExitCode::from(2);
    }
    let evaluated = context.eval(Source::from_bytes(code.as_bytes()));
    // Promise jobs queued by the program (async functions, `.then`) run before it ends.
    let settled = evaluated.and_then(|_| context.run_jobs());
    let status = match settled {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let shown = error
                .try_native(&mut context)
                .map(|native| native.to_string())
                .unwrap_or_else(|_| error.to_string());
            eprintln!("Uncaught {shown}");
            ExitCode::FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    status
}
