//! libtorch's CUDA library, opened only when a model is asked to run on CUDA.
//!
//! Our binaries link `libtorch_cpu.so` and not `libtorch_cuda.so` (build/link_libtorch.rs).
//! Opening the CUDA library maps about 120 MB of CUDA code (cuDNN, cuBLAS, the CUDA runtime)
//! and costs the dynamic loader most of a start-up, which a CPU-only service never needs.
//! When a device `cuda[:N]` (or `auto` on a machine with an NVIDIA device node) is asked for,
//! [`load`] opens it once, `RTLD_GLOBAL`, from beside the `libtorch_cpu.so` this process runs:
//! its static initialisers register libtorch's CUDA hooks and kernels, after which
//! `tch::Cuda` sees the GPUs as if it had been linked.
use std::path::PathBuf;
use std::sync::Mutex;

/// The CUDA library's name in libtorch's `lib` folder.
pub const LIBRARY: &str = "libtorch_cuda.so";

/// Where the CUDA library was opened from, once it has been.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The folder of the `libtorch_cpu.so` mapped into this process (from `/proc/self/maps`),
/// else the one this crate was built against.
///
/// The library must be opened before anything asks libtorch about CUDA: libtorch looks for
/// its CUDA hooks once, at the first such query, and keeps the answer. Every CUDA query of
/// ours goes through [`available`] or `DeviceSpec::resolve`, which open it first.
fn libtorch_dir() -> Option<PathBuf> {
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for line in maps.lines() {
            // A library replaced on disk under the running process shows " (deleted)": its
            // folder no longer holds the CUDA library that matches it.
            if let Some(i) = line.find('/')
                && !line.ends_with(" (deleted)")
            {
                let p = std::path::Path::new(&line[i..]);
                if p.file_name().is_some_and(|n| n == "libtorch_cpu.so") {
                    return p.parent().map(PathBuf::from);
                }
            }
        }
    }
    option_env!("AUGUR_LIBTORCH_LIB").map(PathBuf::from)
}

/// Opens libtorch's CUDA library (once; a failure is not kept, a later ask tries again) and
/// gives its path, or why it could not.
pub fn load() -> Result<PathBuf, String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = loaded.as_ref() {
        return Ok(p.clone());
    }
    let dir = libtorch_dir().ok_or_else(|| {
        format!(
            "cannot tell where libtorch lives (no libtorch_cpu.so in /proc/self/maps), so \
             {LIBRARY} cannot be opened"
        )
    })?;
    let path = dir.join(LIBRARY);
    if !path.exists() {
        return Err(format!(
            "this libtorch has no CUDA library ({} does not exist: a CPU-only build)",
            path.display()
        ));
    }
    // The workspace's one `unsafe` (dlopen has no safe form). SAFETY: opening libtorch's own CUDA library, built with the libtorch_cpu.so already
    // mapped; its initialisers only register hooks and kernels with it. It stays open for the
    // life of the process (the handle is leaked on purpose: unloading libtorch code is unsafe).
    #[allow(unsafe_code)]
    let lib = unsafe {
        libloading::os::unix::Library::open(
            Some(&path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .map_err(|e| format!("opening {}: {e}", path.display()))?;
    std::mem::forget(lib);
    *loaded = Some(path.clone());
    Ok(path)
}

/// Where the CUDA library was opened from, if it has been.
pub fn loaded() -> Option<PathBuf> {
    LOADED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Whether this machine shows an NVIDIA device at all (its driver's device nodes), checked
/// before `auto` opens the CUDA library: a machine without one never pays for it.
pub fn nvidia_device_present() -> bool {
    ["/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// Whether libtorch can run on a GPU here: opens the CUDA library only when the machine shows
/// an NVIDIA device.
pub fn available() -> bool {
    nvidia_device_present() && load().is_ok() && tch::Cuda::is_available()
}
