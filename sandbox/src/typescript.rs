//! TypeScript: types stripped natively with oxc (parse as TypeScript, run only the TypeScript
//! transform at target `esnext`, print JavaScript), then run as JavaScript. A parse or transform
//! error is reported as a compile error naming the line and column; nothing runs.

use std::path::Path;

use oxc_allocator::Allocator;
use oxc_codegen::Codegen;
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};

/// The program as JavaScript, or the compiler's messages.
pub(crate) fn strip_types(source: &str) -> Result<String, String> {
    let allocator = Allocator::default();
    let path = Path::new("main.ts");
    let parsed = Parser::new(&allocator, source, SourceType::ts()).parse();
    if parsed.panicked || parsed.diagnostics.has_errors() {
        return Err(messages(source, parsed.diagnostics.into_vec()));
    }
    let mut program = parsed.program;
    let semantic = SemanticBuilder::new().build(&program);
    let options = TransformOptions::from_target("esnext").map_err(|e| e.to_string())?;
    let transformed =
        Transformer::new(&allocator, path, &options).build_with_scoping(semantic.semantic.into_scoping(), &mut program);
    if transformed.diagnostics.has_errors() {
        return Err(messages(source, transformed.diagnostics.into_vec()));
    }
    Ok(Codegen::new().build(&program).code)
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
    let before = source.get(..offset.min(source.len())).unwrap_or("");
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
}
