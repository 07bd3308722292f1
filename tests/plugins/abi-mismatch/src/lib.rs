//! A plugin library built for another plugin ABI: its declaration carries ABI version
//! `PLUGIN_ABI_VERSION + 1000`. The loader must refuse it before it reads anything past that number.

use std::ffi::c_void;

use distill_core::abi::{self, PluginDeclaration};

unsafe extern "C" fn never_called(_err: *mut u8, _cap: usize) -> *mut c_void {
    // A loader that reached this constructor has failed its check: make that visible.
    std::process::abort()
}

/// The declaration, with a foreign ABI version.
#[unsafe(no_mangle)]
pub static DISTILL_PLUGIN_DECLARATION: PluginDeclaration = PluginDeclaration {
    abi_version: abi::PLUGIN_ABI_VERSION + 1000,
    rustc_version: abi::RUSTC_VERSION_NUL.as_ptr().cast(),
    core_version: abi::CORE_VERSION_NUL.as_ptr().cast(),
    candle_version: abi::CANDLE_VERSION_NUL.as_ptr().cast(),
    features: abi::FEATURES_NUL.as_ptr().cast(),
    layout: abi::layout_fingerprint(),
    constructor: never_called,
};
