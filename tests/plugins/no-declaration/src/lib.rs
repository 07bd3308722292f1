//! A dynamic library that is not a distill plugin: it exports a function but no plugin declaration.

/// Something to export, so the library is not empty.
#[unsafe(no_mangle)]
pub extern "C" fn distill_test_unrelated() -> i32 {
    42
}
