//! TypeScript to JavaScript for the sandbox: oxc parses the program as TypeScript, runs only its
//! TypeScript transform (target `esnext`) and prints JavaScript. A parse or transform error is a
//! compile error naming the line and column; nothing runs.
//!
//! This runs *inside* the sandbox's wasm guest (`sandbox/js-guest`), never in a host process:
//! oxc's parser, semantic pass and printer recurse on the program's nesting, so a hostile program
//! can exhaust any native stack. In the guest that is a wasm trap (the execution ends as
//! `stack_overflow`); [`MAX_NESTING`] turns the common case into a clear compile error first.

use std::path::Path;

use oxc_allocator::Allocator;
use oxc_codegen::Codegen;
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};

/// Deepest bracket nesting (`(`, `[`, `{`) accepted before parsing. Real programs stay far
/// below it; generated or hostile ones that exceed it get a compile error instead of a trap.
pub const MAX_NESTING: usize = 512;

/// The exit code the guest ends with after a compile error, so the host can tell it from a
/// program's own failure (boa programs cannot choose their exit code).
pub const COMPILE_ERROR_EXIT: u8 = 65;

/// The program as JavaScript, or the compiler's messages (`main.ts:L:C: error: ...` lines).
pub fn strip_types(source: &str) -> Result<String, String> {
    if let Some((offset, depth)) = too_deep(source, MAX_NESTING) {
        let (line, col) = line_col(source, offset);
        return Err(format!("main.ts:{line}:{col}: error: brackets nested deeper than {depth} levels\n"));
    }
    let allocator = Allocator::default();
    let path = Path::new("main.ts");
    let parsed = Parser::new(&allocator, source, SourceType::ts()).parse();
    if parsed.panicked || parsed.diagnostics.has_errors() {
        return Err(messages(source, parsed.diagnostics.into_vec()));
    }
    let mut program = parsed.program;
    let semantic = SemanticBuilder::new().build(&program);
    let options = TransformOptions::from_target("esnext").map_err(|e| format!("main.ts: error: {e}\n"))?;
    let transformed =
        Transformer::new(&allocator, path, &options).build_with_scoping(semantic.semantic.into_scoping(), &mut program);
    if transformed.diagnostics.has_errors() {
        return Err(messages(source, transformed.diagnostics.into_vec()));
    }
    Ok(Codegen::new().build(&program).code)
}

/// Where the bracket nesting first passes `max`, ignoring brackets inside string literals and
/// comments: `Some((byte offset, max))`, or `None` when it never does. Template literals and
/// regular expressions are scanned as code, which can only over-count (a stricter check).
pub fn too_deep(source: &str, max: usize) -> Option<(usize, usize)> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some((i, max));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn messages(source: &str, diagnostics: Vec<oxc_diagnostics::OxcDiagnostic>) -> String {
    let mut out = String::new();
    for diagnostic in diagnostics {
        let at = diagnostic.labels.first().map(|label| line_col(source, label.offset() as usize));
        match at {
            Some((line, col)) => out.push_str(&format!("main.ts:{line}:{col}: error: {diagnostic}\n")),
            None => out.push_str(&format!("main.ts: error: {diagnostic}\n")),
        }
    }
    out
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(source.len());
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    let before = &source[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_go_and_code_stays() {
        let js = strip_types(
            "interface P { x: number }\nconst p: P = { x: 2 };\nfunction sq(n: number): number { return n * n }\nconsole.log(sq(p.x) as number);\nenum Color { Red, Green }\nconsole.log(Color.Green);\n",
        )
        .expect("valid TypeScript");
        assert!(!js.contains("interface"), "{js}");
        assert!(!js.contains(": number"), "{js}");
        assert!(js.contains("console.log(sq(p.x))"), "{js}");
        assert!(js.contains("Color"), "enums compile to objects: {js}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let error = strip_types("const a = 1;\nlet b: = 2;\n").expect_err("invalid");
        assert!(error.starts_with("main.ts:2:"), "{error}");
    }

    #[test]
    fn deep_nesting_is_a_compile_error_before_parsing() {
        let deep = format!("let a = {}1{};", "[".repeat(5_000), "]".repeat(5_000));
        let error = strip_types(&deep).expect_err("too deep");
        assert!(error.starts_with("main.ts:1:") && error.contains("nested deeper than 512"), "{error}");
        // Brackets in strings and comments do not count; balanced nesting at the bound passes.
        let quoted =
            format!("const s = \"{}\"; // {}\n/* {} */", "(".repeat(2_000), "[".repeat(2_000), "{".repeat(2_000));
        assert_eq!(too_deep(&quoted, MAX_NESTING), None);
        let at_bound = format!("let a = {}1{};", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(too_deep(&at_bound, MAX_NESTING), None);
    }

    /// A thread with a large stack, so that the native tests exercise the parser (which the
    /// sandbox only ever runs inside wasm) without depending on the test harness's stack size.
    fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(256 << 20).spawn(f).expect("thread").join().expect("no panic")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)))]

        /// Fuzz: any text is stripped or refused with a located message; nothing panics.
        /// `./dev fuzz` runs this with many more cases.
        #[test]
        fn any_text_is_stripped_or_refused(source in proptest::string::string_regex(
            r"([a-z:;=<>(){}\[\]'`.,!?+\-*/ \n0-9]|let |const |interface |enum |type |=>|function |as |\$\{){0,200}"
        ).expect("regex")) {
            let outcome = on_big_stack(move || strip_types(&source));
            if let Err(message) = outcome {
                proptest::prop_assert!(message.starts_with("main.ts"), "{message}");
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let source = String::from_utf8_lossy(&bytes).into_owned();
            let _ = on_big_stack(move || strip_types(&source));
        }
    }
}
