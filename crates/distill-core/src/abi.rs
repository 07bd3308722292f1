//! The binary interface between the `distill` binary and plugins loaded from dynamic libraries.
//!
//! Rust has no stable ABI: a `Box<dyn Plugin>` (and every `Tensor`, `Recipe` or `RunReport` that crosses with
//! it) is only meaningful to a binary built by the same compiler from the same versions of distill-core and
//! candle with the same features. A plugin library therefore exports one `#[repr(C)]` [`PluginDeclaration`]
//! (made by [`export_plugin!`](crate::export_plugin)) that carries all of those, and the loader
//! (distill-registry) compares every field with its own before it calls anything in the library.
//!
//! Rules the declaration enforces or the macro sets up:
//! - [`PLUGIN_ABI_VERSION`] is the layout of the declaration and of the [`Plugin`] trait's calling contract; it
//!   is its own number, bumped when either changes, not the crate's release version.
//! - The plugin and the host share one memory allocator (the C library's `malloc`): the macro sets
//!   [`std::alloc::System`] as the library's global allocator, so values made on one side can be freed on the
//!   other. A plugin that declares its own `#[global_allocator]` does not compile.
//! - A panic never unwinds across the boundary: every call into the plugin runs under `catch_unwind` inside the
//!   library ([`Guarded`]) and a panic comes back as an [`Error`] naming the plugin, the call and the panic's
//!   message and place.
//! - The host only calls the plugin's whole-job methods (`manifest`, `check`, `run`, `evaluate`, `export`,
//!   `predict`), so all tensor work (and candle's global state, such as tensor ids used by autograd) stays
//!   inside the library's own copy of candle; `predict` hands the binary's ONNX runtime plain arrays.

use std::{
    cell::RefCell,
    ffi::{c_char, c_void, CStr},
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
};

use crate::{
    deploy::{Array, ExportInfo, ExportRequest, PredictRequest, Prediction},
    pipeline::CheckSummary,
    plugin::{Manifest, RunContext},
    recipe::Recipe,
    report::RunReport,
    task::{Evaluation, TaskInfo},
    Error, Network, Outputs, Plugin, Result,
};

/// The plugin ABI version: the layout of [`PluginDeclaration`] and the calling contract of [`Plugin`].
pub const PLUGIN_ABI_VERSION: u32 = 5;

// Each fact is written once, as a literal-producing macro, so the plain constant and its NUL-terminated copy
// for the declaration cannot drift apart.
macro_rules! rustc_version {
    () => {
        env!("DISTILL_RUSTC_VERSION")
    };
}
macro_rules! core_version {
    () => {
        env!("CARGO_PKG_VERSION")
    };
}
macro_rules! candle_version {
    () => {
        env!("DISTILL_CANDLE_VERSION")
    };
}
#[cfg(all(feature = "cuda", debug_assertions))]
macro_rules! features {
    () => {
        "cuda,debug-assertions"
    };
}
#[cfg(all(feature = "cuda", not(debug_assertions)))]
macro_rules! features {
    () => {
        "cuda"
    };
}
#[cfg(all(not(feature = "cuda"), debug_assertions))]
macro_rules! features {
    () => {
        "debug-assertions"
    };
}
#[cfg(all(not(feature = "cuda"), not(debug_assertions)))]
macro_rules! features {
    () => {
        ""
    };
}

/// The distill-core release this binary was built with.
pub const CORE_VERSION: &str = core_version!();

/// The rustc that built this copy of distill-core (recorded by its build script), e.g. `1.95.0 (59807616e 2026-04-14)`.
pub const RUSTC_VERSION: &str = rustc_version!();

/// The candle release distill-core is pinned to (`=` in the workspace manifest; a test checks Cargo.lock).
pub const CANDLE_VERSION: &str = candle_version!();

/// Build features that change the layout or behaviour of types crossing the boundary.
pub const FEATURES: &str = features!();

/// NUL-terminated copies of the strings above, for the declaration.
#[doc(hidden)]
pub const RUSTC_VERSION_NUL: &str = concat!(rustc_version!(), "\0");
#[doc(hidden)]
pub const CORE_VERSION_NUL: &str = concat!(core_version!(), "\0");
#[doc(hidden)]
pub const CANDLE_VERSION_NUL: &str = concat!(candle_version!(), "\0");
#[doc(hidden)]
pub const FEATURES_NUL: &str = concat!(features!(), "\0");

/// The name of the symbol every plugin library exports.
pub const DECLARATION_SYMBOL: &str = "DISTILL_PLUGIN_DECLARATION";

/// Makes a plugin. Writes a NUL-terminated error message into `err` (capacity `err_cap` bytes) and returns
/// null on failure; on success returns a pointer from `Box::into_raw(Box::new(Box<dyn Plugin>))`.
pub type Constructor = unsafe extern "C" fn(err: *mut u8, err_cap: usize) -> *mut c_void;

/// What a plugin library exports under [`DECLARATION_SYMBOL`]. `abi_version` comes first so that a loader can
/// read it from a library of any ABI version before it trusts the rest of the layout.
#[repr(C)]
pub struct PluginDeclaration {
    /// [`PLUGIN_ABI_VERSION`] of the library.
    pub abi_version: u32,
    /// `rustc --version` (without the `rustc ` prefix), NUL-terminated.
    pub rustc_version: *const c_char,
    /// distill-core's version, NUL-terminated.
    pub core_version: *const c_char,
    /// candle's version, NUL-terminated.
    pub candle_version: *const c_char,
    /// Comma-separated build features ([`FEATURES`]), NUL-terminated.
    pub features: *const c_char,
    /// [`layout_fingerprint`] of the types that cross the boundary.
    pub layout: u64,
    /// Makes the plugin.
    pub constructor: Constructor,
}

// SAFETY: the pointers point at 'static, immutable, NUL-terminated string constants.
unsafe impl Sync for PluginDeclaration {}

const fn mix(h: u64, v: usize) -> u64 {
    (h ^ v as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// A hash of the sizes and alignments of the types that cross the plugin boundary, as this build lays them
/// out. Equal versions should give equal layouts; this catches what the versions cannot (a different `toml`
/// or `serde_json` release resolved by the plugin's own lock file, for example).
pub const fn layout_fingerprint() -> u64 {
    use std::mem::{align_of, size_of};
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    macro_rules! add {
        ($($t:ty),*) => { $( h = mix(h, size_of::<$t>()); h = mix(h, align_of::<$t>()); )* };
    }
    add!(
        Recipe,
        RunContext,
        RunReport,
        Manifest,
        TaskInfo,
        Evaluation,
        CheckSummary,
        Error,
        Result<RunReport>,
        candle_core::Tensor,
        candle_core::Device,
        toml::Table,
        serde_json::Value,
        Outputs,
        Box<dyn Plugin>,
        Box<dyn Network>,
        String,
        std::path::PathBuf,
        ExportRequest,
        ExportInfo,
        PredictRequest,
        Prediction,
        Array
    );
    h
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Installs a panic hook (in the plugin library's copy of std) that records the message and place of a panic
/// for [`Guarded`] to report, instead of printing it.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = payload_message(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
    }));
}

/// Runs `f`, turning a panic into an error that names the plugin and the call.
pub fn guard<T>(plugin: &str, call: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| payload_message(payload.as_ref()));
            Err(Error::msg(format!(
                "plugin `{plugin}` panicked in `{call}`: {msg}"
            )))
        }
    }
}

/// A plugin whose every call runs under [`guard`]. [`export_plugin!`](crate::export_plugin) wraps the
/// library's plugin in it, so the `catch_unwind` runs in the library's own copy of std.
pub struct Guarded<P> {
    name: String,
    inner: P,
}

impl<P: Plugin> Guarded<P> {
    /// Wraps `inner`; its manifest's name is used in error messages.
    pub fn new(inner: P) -> Result<Self> {
        let name = guard("?", "manifest", || Ok(inner.manifest().name))?;
        Ok(Self { name, inner })
    }
}

impl<P: Plugin> crate::Domain for Guarded<P> {
    fn manifest(&self) -> Manifest {
        // A manifest is plain data; a plugin that panics here gets a placeholder naming the failure.
        guard(&self.name, "manifest", || Ok(self.inner.manifest())).unwrap_or_else(|e| Manifest {
            name: self.name.clone(),
            domain: "?".into(),
            version: "?".into(),
            description: e.to_string(),
            models: vec![],
            datasets: vec![],
            losses: vec![],
            recipes: vec![],
        })
    }
    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        guard(&self.name, "task_info", || self.inner.task_info(recipe))
    }
    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn crate::Task>> {
        guard(&self.name, "load_task", || {
            self.inner.load_task(recipe, ctx)
        })
    }
    fn build_network(
        &self,
        model: &toml::Table,
        ctx: &crate::BuildContext,
    ) -> Result<Box<dyn Network>> {
        guard(&self.name, "build_network", || {
            self.inner.build_network(model, ctx)
        })
    }
    fn check_augment(&self, name: &str) -> Result<()> {
        guard(&self.name, "check_augment", || {
            self.inner.check_augment(name)
        })
    }
    fn build_loss(
        &self,
        spec: &crate::losses::LossSpec,
        student: &Outputs,
        teacher: &Outputs,
        ctx: &crate::BuildContext,
    ) -> Result<Option<Box<dyn crate::losses::DistillLoss>>> {
        guard(&self.name, "build_loss", || {
            self.inner.build_loss(spec, student, teacher, ctx)
        })
    }
}

impl<P: Plugin> Plugin for Guarded<P> {
    fn check(&self, recipe: &Recipe, ctx: &RunContext) -> Result<CheckSummary> {
        guard(&self.name, "check", || self.inner.check(recipe, ctx))
    }
    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> Result<RunReport> {
        guard(&self.name, "run", || self.inner.run(recipe, ctx))
    }
    fn evaluate(
        &self,
        recipe: &Recipe,
        model: &toml::Table,
        weights: &Path,
        ctx: &RunContext,
    ) -> Result<(String, Evaluation)> {
        guard(&self.name, "evaluate", || {
            self.inner.evaluate(recipe, model, weights, ctx)
        })
    }
    fn export(&self, req: &ExportRequest) -> Result<ExportInfo> {
        guard(&self.name, "export", || self.inner.export(req))
    }
    fn predict(&self, req: &PredictRequest) -> Result<Vec<Prediction>> {
        guard(&self.name, "predict", || self.inner.predict(req))
    }
}

fn write_error(err: *mut u8, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let n = msg.len().min(cap - 1);
    // SAFETY: the caller (the loader) passes a writable buffer of `cap` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err, n);
        *err.add(n) = 0;
    }
}

/// The body of the constructor that [`export_plugin!`](crate::export_plugin) emits: sets up the library's
/// runtime (flush-to-zero threads, the panic hook), makes the plugin under `catch_unwind` and hands it over
/// boxed twice (a thin pointer to a `Box<dyn Plugin>`).
#[doc(hidden)]
pub fn construct<P: Plugin + 'static>(
    make: impl FnOnce() -> P,
    err: *mut u8,
    err_cap: usize,
) -> *mut c_void {
    install_panic_hook();
    crate::runtime::init();
    let made = guard("?", "constructor", || Guarded::new(make()));
    match made {
        Ok(p) => {
            let b: Box<dyn Plugin> = Box::new(p);
            Box::into_raw(Box::new(b)).cast()
        }
        Err(e) => {
            write_error(err, err_cap, &e.to_string());
            std::ptr::null_mut()
        }
    }
}

/// The fields of a declaration, read as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredVersions {
    /// ABI version.
    pub abi_version: u32,
    /// rustc version.
    pub rustc: String,
    /// distill-core version.
    pub core: String,
    /// candle version.
    pub candle: String,
    /// Build features.
    pub features: String,
    /// Layout fingerprint.
    pub layout: u64,
}

impl DeclaredVersions {
    /// What this build of distill-core declares.
    pub fn host() -> Self {
        Self {
            abi_version: PLUGIN_ABI_VERSION,
            rustc: RUSTC_VERSION.into(),
            core: CORE_VERSION.into(),
            candle: CANDLE_VERSION.into(),
            features: FEATURES.into(),
            layout: layout_fingerprint(),
        }
    }

    /// Reads a library's declaration. Reads the ABI version first and stops there if it differs from ours
    /// (the rest of the layout may differ too).
    ///
    /// # Safety
    /// `decl` must point at a readable declaration whose first field is a `u32`: a symbol exported as
    /// [`DECLARATION_SYMBOL`].
    pub unsafe fn read(decl: *const PluginDeclaration) -> std::result::Result<Self, u32> {
        // SAFETY: the caller guarantees a readable u32 at the start of the declaration.
        let abi = unsafe { std::ptr::read_unaligned(decl.cast::<u32>()) };
        if abi != PLUGIN_ABI_VERSION {
            return Err(abi);
        }
        // SAFETY: same ABI version, hence the same layout; the strings are NUL-terminated constants.
        let d = unsafe { &*decl };
        let s = |p: *const c_char| {
            if p.is_null() {
                String::from("(null)")
            } else {
                // SAFETY: see above.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        Ok(Self {
            abi_version: abi,
            rustc: s(d.rustc_version),
            core: s(d.core_version),
            candle: s(d.candle_version),
            features: s(d.features),
            layout: d.layout,
        })
    }

    /// Compares a plugin's declaration (`self`) with the host's; the error names both sides.
    pub fn check_against(&self, host: &Self) -> std::result::Result<(), String> {
        let feats = |f: &str| {
            if f.is_empty() {
                "no features".to_string()
            } else {
                format!("features [{f}]")
            }
        };
        if self.abi_version != host.abi_version {
            return Err(format!(
                "plugin ABI version {}, distill expects ABI version {}",
                self.abi_version, host.abi_version
            ));
        }
        if self.rustc != host.rustc {
            return Err(format!(
                "plugin built with rustc {}, distill built with rustc {}",
                self.rustc, host.rustc
            ));
        }
        if self.core != host.core {
            return Err(format!(
                "plugin built against distill-core {}, distill is distill-core {}",
                self.core, host.core
            ));
        }
        if self.candle != host.candle {
            return Err(format!(
                "plugin built against candle {}, distill built with candle {}",
                self.candle, host.candle
            ));
        }
        if self.features != host.features {
            return Err(format!(
                "plugin built with {}, distill built with {} (build both in the same profile with the same features)",
                feats(&self.features),
                feats(&host.features)
            ));
        }
        if self.layout != host.layout {
            return Err(format!(
                "plugin's boundary types have layout {:#018x}, distill's {:#018x} (a dependency such as toml or \
                 serde_json resolved to another release: build the plugin in distill's workspace or with its Cargo.lock)",
                self.layout, host.layout
            ));
        }
        Ok(())
    }
}

/// Exports a plugin from a `cdylib` crate: `distill_core::export_plugin!(MyPlugin::new());`
///
/// Emits the `#[no_mangle]` [`PluginDeclaration`] named `DISTILL_PLUGIN_DECLARATION` and its constructor,
/// and sets the library's global allocator to [`std::alloc::System`] (shared with the `distill` binary).
/// The expression is evaluated once, when the plugin is loaded, inside `catch_unwind`.
#[macro_export]
macro_rules! export_plugin {
    ($constructor:expr) => {
        #[global_allocator]
        static __DISTILL_PLUGIN_ALLOCATOR: ::std::alloc::System = ::std::alloc::System;

        #[doc(hidden)]
        unsafe extern "C" fn __distill_plugin_construct(
            err: *mut u8,
            err_cap: usize,
        ) -> *mut ::std::ffi::c_void {
            $crate::abi::construct(|| $constructor, err, err_cap)
        }

        /// The plugin declaration that `distill` reads before it calls anything in this library.
        #[unsafe(no_mangle)]
        pub static DISTILL_PLUGIN_DECLARATION: $crate::abi::PluginDeclaration =
            $crate::abi::PluginDeclaration {
                abi_version: $crate::abi::PLUGIN_ABI_VERSION,
                rustc_version: $crate::abi::RUSTC_VERSION_NUL.as_ptr().cast(),
                core_version: $crate::abi::CORE_VERSION_NUL.as_ptr().cast(),
                candle_version: $crate::abi::CANDLE_VERSION_NUL.as_ptr().cast(),
                features: $crate::abi::FEATURES_NUL.as_ptr().cast(),
                layout: $crate::abi::layout_fingerprint(),
                constructor: __distill_plugin_construct,
            };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_strings_match_the_constants() {
        assert_eq!(RUSTC_VERSION_NUL.trim_end_matches('\0'), RUSTC_VERSION);
        assert_eq!(CORE_VERSION_NUL.trim_end_matches('\0'), CORE_VERSION);
        assert_eq!(CANDLE_VERSION_NUL.trim_end_matches('\0'), CANDLE_VERSION);
        assert_eq!(FEATURES_NUL.trim_end_matches('\0'), FEATURES);
        assert!(
            RUSTC_VERSION.starts_with(char::is_numeric),
            "{RUSTC_VERSION}"
        );
    }

    #[test]
    fn candle_version_matches_the_lock_file() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
                .expect("workspace Cargo.lock");
        let locked = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"candle-core\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .expect("candle-core in Cargo.lock");
        assert_eq!(locked, CANDLE_VERSION);
    }

    #[test]
    fn mismatches_name_both_sides() {
        let host = DeclaredVersions::host();
        assert_eq!(host.check_against(&host), Ok(()));
        let mut p = host.clone();
        p.rustc = "1.94.0 (4a4ef493e 2026-03-02)".into();
        let e = p.check_against(&host).unwrap_err();
        assert_eq!(
            e,
            format!("plugin built with rustc 1.94.0 (4a4ef493e 2026-03-02), distill built with rustc {RUSTC_VERSION}")
        );
        let mut p = host.clone();
        p.abi_version = 7;
        assert_eq!(
            p.check_against(&host).unwrap_err(),
            format!("plugin ABI version 7, distill expects ABI version {PLUGIN_ABI_VERSION}")
        );
        let mut p = host.clone();
        p.core = "0.0.9".into();
        assert!(p
            .check_against(&host)
            .unwrap_err()
            .contains("distill-core 0.0.9, distill is distill-core"));
        let mut p = host.clone();
        p.candle = "0.10.0".into();
        assert!(p
            .check_against(&host)
            .unwrap_err()
            .contains("candle 0.10.0, distill built with candle 0.11.1"));
        let mut p = host.clone();
        p.features = "cuda".into();
        assert!(p
            .check_against(&host)
            .unwrap_err()
            .contains("plugin built with features [cuda]"));
        let mut p = host.clone();
        p.layout ^= 1;
        assert!(p.check_against(&host).unwrap_err().contains("layout"));
    }

    #[test]
    fn guard_turns_a_panic_into_an_error_with_its_message() {
        let r: Result<()> = guard("demo", "run", || panic!("boom {}", 42));
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("plugin `demo` panicked in `run`: boom 42"),
            "{e}"
        );
        let ok = guard("demo", "run", || Ok(7)).unwrap();
        assert_eq!(ok, 7);
    }

    #[test]
    fn layout_fingerprint_is_a_compile_time_constant() {
        const L: u64 = layout_fingerprint();
        assert_eq!(L, layout_fingerprint());
        assert_ne!(L, 0);
    }
}
