//! Finding out whether a GPU can be trusted, and saying exactly why not (DOMAIN.md section 6).
//!
//! cudarc loads `libcuda` and `libnvrtc` at first use and panics when they are absent, so every
//! step is checked before cudarc is asked to do anything: the driver library (on the loader path,
//! or in the usual CUDA directories, loaded by full path so cudarc then finds it by its soname),
//! `cuInit`, a device, NVRTC, an NVRTC that can target the device's architecture, and a smoke
//! kernel (`stages/kernels/smoke.cu`) that must compute on the device what the CPU computes.
//! Only then is the device used. [`examine`] records each step for `asterflow doctor`;
//! [`usable`] runs it once per process for the `train` stage.

pub mod trainer;

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};

/// The smoke kernel, built into the binary so `doctor` works from any directory.
pub const SMOKE_SOURCE: &str = include_str!("../../../stages/kernels/smoke.cu");

/// Why no GPU is used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("GPU not available: {reason}")]
pub struct Unavailable {
    pub reason: String,
}

impl Unavailable {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A device that passed every check.
#[derive(Debug)]
pub struct Gpu {
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    pub memory_bytes: usize,
    /// `--gpu-architecture` for NVRTC: `sm_90` on an H200.
    pub arch: String,
}

impl Gpu {
    /// `name (sm_90, 141 GiB)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {:.0} GiB)",
            self.name,
            self.arch,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }

    /// Compiles CUDA C for this device's architecture; the error carries NVRTC's log.
    pub fn compile(&self, source: &str, name: &str) -> Result<Ptx, String> {
        let options = CompileOptions {
            options: vec![format!("--gpu-architecture={}", self.arch)],
            name: Some(name.to_owned()),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(source, options).map_err(|error| match error {
            cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => format!(
                "NVRTC could not compile {name} for {}: {nvrtc:?}\n{}",
                self.arch,
                log.to_string_lossy().trim()
            ),
            other => format!("NVRTC could not compile {name}: {other:?}"),
        })
    }
}

/// One check and what it found.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Every check `examine` ran, and the outcome.
#[derive(Debug)]
pub struct Examination {
    pub checks: Vec<Check>,
    pub outcome: Result<Arc<Gpu>, Unavailable>,
}

/// The process's one examination, for training: run at the first call, then remembered.
pub fn usable() -> Result<Arc<Gpu>, Unavailable> {
    static GPU: OnceLock<Result<Arc<Gpu>, Unavailable>> = OnceLock::new();
    GPU.get_or_init(|| examine().outcome).clone()
}

/// Runs every check in order, stopping at the first that fails. Never panics: a panic inside
/// cudarc (a symbol missing from an old driver) becomes the reason.
pub fn examine() -> Examination {
    let mut checks = Vec::new();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| examine_steps(&mut checks)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(Unavailable::new(format!(
                    "the CUDA bindings failed: {message}"
                )))
            });
    Examination { checks, outcome }
}

/// Set to `off` (or `0`) to keep every GPU out of a run, as on a machine without one.
pub const DISABLE_VARIABLE: &str = "ASTERFLOW_GPU";

fn examine_steps(checks: &mut Vec<Check>) -> Result<Arc<Gpu>, Unavailable> {
    let mut record = |name: &'static str, result: Result<String, String>| match result {
        Ok(detail) => {
            checks.push(Check {
                name,
                ok: true,
                detail,
            });
            Ok(())
        }
        Err(detail) => {
            checks.push(Check {
                name,
                ok: false,
                detail: detail.clone(),
            });
            Err(Unavailable::new(detail))
        }
    };

    if let Ok(value) = std::env::var(DISABLE_VARIABLE)
        && matches!(value.as_str(), "off" | "0")
    {
        record(
            "enabled",
            Err(format!("disabled by {DISABLE_VARIABLE}={value}")),
        )?;
    }
    if let Err(missing) = record("driver library", load_library("cuda", "the NVIDIA driver")) {
        // Say what NVRTC there is anyway: half of a GPU set-up is still worth knowing about.
        if record("NVRTC library", load_library("nvrtc", "NVRTC")).is_ok() {
            let _ = record("NVRTC", nvrtc_targets(None));
        }
        return Err(missing);
    }
    record("driver", driver_version())?;
    let (context, name, capability, memory_bytes) = match open_device() {
        Ok(found) => found,
        Err(reason) => {
            record("device", Err(reason))?;
            unreachable!("record returns the error");
        }
    };
    let arch = format!("sm_{}{}", capability.0, capability.1);
    record(
        "device",
        Ok(format!(
            "{name}, compute capability {}.{}, {:.0} GiB",
            capability.0,
            capability.1,
            memory_bytes as f64 / (1u64 << 30) as f64
        )),
    )?;
    record("NVRTC library", load_library("nvrtc", "NVRTC"))?;
    record("NVRTC", nvrtc_targets(Some(&arch)))?;
    let gpu = Arc::new(Gpu {
        stream: context.default_stream(),
        context,
        name,
        capability,
        memory_bytes,
        arch,
    });
    record("smoke kernel", smoke(&gpu))?;
    Ok(gpu)
}

/// Loads `lib<name>` the way cudarc will look for it (the loader path first, by each name cudarc
/// tries), else from the usual CUDA directories by full path. Says where it looked when neither
/// works.
fn load_library(name: &str, what: &str) -> Result<String, String> {
    let mut candidates = cudarc::get_lib_name_candidates(name);
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|candidate| seen.insert(candidate.clone()));
    for candidate in &candidates {
        if dlopen(std::path::Path::new(candidate)) {
            return Ok(format!("{candidate} (from the loader path)"));
        }
    }
    let directories = search_directories();
    for directory in &directories {
        for candidate in &candidates {
            let path = directory.join(candidate);
            if path.is_file() && dlopen(&path) {
                return Ok(format!(
                    "{} (not on the loader path; loaded by full path; add {} to LD_LIBRARY_PATH to silence this)",
                    path.display(),
                    directory.display()
                ));
            }
        }
    }
    // The Windows-style names cudarc also tries say nothing useful on Linux.
    let prefix = format!("lib{name}.so");
    let shown: Vec<&str> = candidates
        .iter()
        .filter(|candidate| candidate.starts_with(&prefix))
        .map(String::as_str)
        .collect();
    Err(format!(
        "{what} library lib{name} was not found: tried {} on the loader path (LD_LIBRARY_PATH, /etc/ld.so.cache) and in {}",
        shown.join(", "),
        directories
            .iter()
            .map(|directory| directory.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Where CUDA libraries live when they are not on the loader path.
fn search_directories() -> Vec<PathBuf> {
    let mut directories = Vec::new();
    for variable in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(variable) {
            let root = PathBuf::from(root);
            directories.push(root.join("lib64"));
            directories.push(root.join("lib"));
        }
    }
    directories.push(PathBuf::from("/usr/local/cuda/lib64"));
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("cuda-"))
            })
            .map(|path| path.join("lib64"))
            .collect();
        versioned.sort();
        versioned.reverse();
        directories.extend(versioned);
    }
    for fixed in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        directories.push(PathBuf::from(fixed));
    }
    directories.retain(|directory| directory.is_dir());
    directories
}

/// `dlopen`s a library for the life of the process, so that cudarc's own `dlopen` by soname
/// finds it already loaded.
fn dlopen(path: &std::path::Path) -> bool {
    let Ok(name) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string; the handle is deliberately never closed.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

fn driver_version() -> Result<String, String> {
    cudarc::driver::result::init().map_err(|error| {
        format!("the driver library loaded but cuInit failed: {error:?} (is the kernel module loaded, and is a device visible to this process?)")
    })?;
    let mut version = 0i32;
    // SAFETY: the driver library is loaded and initialised; `version` is a valid out-pointer.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDriverGetVersion failed: {status:?}"));
    }
    Ok(format!(
        "CUDA {}.{} driver API",
        version / 1000,
        (version % 1000) / 10
    ))
}

type Opened = (Arc<CudaContext>, String, (i32, i32), usize);

fn open_device() -> Result<Opened, String> {
    let count = CudaContext::device_count().map_err(|error| format!("no device: {error:?}"))?;
    if count < 1 {
        return Err("no CUDA device is visible (check CUDA_VISIBLE_DEVICES)".into());
    }
    let context = CudaContext::new(0).map_err(|error| format!("device 0: {error:?}"))?;
    let name = context
        .name()
        .map_err(|error| format!("device 0 name: {error:?}"))?;
    let capability = context
        .compute_capability()
        .map_err(|error| format!("device 0 compute capability: {error:?}"))?;
    let memory = context
        .total_mem()
        .map_err(|error| format!("device 0 memory: {error:?}"))?;
    Ok((context, name, capability, memory))
}

/// NVRTC's version and whether it can target `arch`: the original system's failure was a GPU
/// newer than its compiler.
fn nvrtc_targets(arch: Option<&str>) -> Result<String, String> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the NVRTC library is loaded; valid out-pointers.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|error| format!("nvrtcVersion failed: {error:?}"))?;
    let mut count = 0i32;
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count) }
        .result()
        .map_err(|error| format!("nvrtcGetNumSupportedArchs failed: {error:?}"))?;
    let mut archs = vec![0i32; count.max(0) as usize];
    // SAFETY: `archs` holds `count` elements.
    unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|error| format!("nvrtcGetSupportedArchs failed: {error:?}"))?;
    let range = match (archs.first(), archs.last()) {
        (Some(low), Some(high)) => format!("sm_{low}..sm_{high}"),
        _ => "none".to_owned(),
    };
    let Some(arch) = arch else {
        return Ok(format!("NVRTC {major}.{minor}, targets {range}"));
    };
    let wanted: i32 = arch.trim_start_matches("sm_").parse().unwrap_or(0);
    if archs.contains(&wanted) {
        Ok(format!(
            "NVRTC {major}.{minor}, targets {range}, including {arch}"
        ))
    } else {
        Err(format!(
            "NVRTC {major}.{minor} cannot target {arch} (it targets {range}): install an NVRTC at least as new as the device"
        ))
    }
}

/// Compiles, loads and runs the smoke kernel, and compares its output with the CPU's.
fn smoke(gpu: &Gpu) -> Result<String, String> {
    const N: usize = 4096;
    let ptx = gpu.compile(SMOKE_SOURCE, "smoke.cu")?;
    let module = gpu
        .context
        .load_module(ptx)
        .map_err(|error| format!("the driver could not load the smoke kernel for {}: {error:?} (a driver older than NVRTC cannot read its PTX)", gpu.arch))?;
    let function = module
        .load_function("smoke")
        .map_err(|error| format!("smoke kernel: {error:?}"))?;
    let x: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let y = vec![1.0f32; N];
    let failed = |error: cudarc::driver::DriverError| format!("smoke kernel run: {error:?}");
    let stream = &gpu.stream;
    let x_device = stream.clone_htod(&x).map_err(failed)?;
    let y_device = stream.clone_htod(&y).map_err(failed)?;
    let mut out = stream.alloc_zeros::<f32>(N).map_err(failed)?;
    let a = 2.0f32;
    let n = N as u32;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&x_device)
        .arg(&y_device)
        .arg(&a)
        .arg(&mut out)
        .arg(&n);
    // SAFETY: the kernel's signature is (const float*, const float*, float, float*, unsigned)
    // and every buffer holds N elements.
    unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }.map_err(failed)?;
    let result = stream.clone_dtoh(&out).map_err(failed)?;
    let mismatches = result
        .iter()
        .enumerate()
        .filter(|&(i, &value)| value != 2.0 * i as f32 + 1.0)
        .count();
    if mismatches > 0 {
        return Err(format!(
            "the smoke kernel ran on {} but {mismatches} of {N} results differ from the CPU's: the device is not trusted",
            gpu.arch
        ));
    }
    Ok(format!(
        "compiled for {}, ran, {N} of {N} results match the CPU",
        gpu.arch
    ))
}

/// NVRTC alone (no driver or device needed): can `source` compile for `arch`? For tests and
/// `doctor` on machines with NVRTC but no GPU.
pub fn compile_only(source: &str, name: &str, arch: &str) -> Result<usize, String> {
    load_library("nvrtc", "NVRTC")?;
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(name.to_owned()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, options)
        .map_err(|error| format!("{name}: {error:?}"))?;
    Ok(ptx.to_src().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile for the reference architecture wherever NVRTC is installed (no GPU
    /// needed); skipped, saying why, where it is not.
    #[test]
    fn kernels_compile_with_nvrtc() {
        let mlp = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/kernels/mlp.cu"),
        )
        .unwrap();
        match compile_only(SMOKE_SOURCE, "smoke.cu", "sm_90") {
            Err(reason) if reason.contains("was not found") => {
                assert!(
                    std::env::var_os("ASTERFLOW_REQUIRE_GPU").is_none_or(|value| value != "1"),
                    "ASTERFLOW_REQUIRE_GPU=1, and NVRTC is missing: {reason}"
                );
                eprintln!("skipped: {reason}");
            }
            result => {
                assert!(result.unwrap() > 0);
                assert!(compile_only(&mlp, "mlp.cu", "sm_90").unwrap() > 0);
                let error = compile_only(
                    "extern \"C\" __global__ void k() { oops; }",
                    "bad.cu",
                    "sm_90",
                )
                .unwrap_err();
                assert!(error.contains("oops"), "{error}");
            }
        }
    }
}
