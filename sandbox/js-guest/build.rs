//! Gives the guest an 8 MiB shadow stack instead of Rust's 1 MiB wasm default: boa's parser and
//! oxc's recurse once per nesting level, and ordinary generated code (long operator chains,
//! deep JSON literals) should parse. Deeper input still overflows, which with the stack placed
//! first in linear memory is a fault just below 4 GiB that the sandbox reports as
//! `stack_overflow`. Untouched stack pages cost nothing (copy-on-write from the snapshot).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=-zstack-size=8388608");
    }
}
