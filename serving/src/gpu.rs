//! The machine's NVIDIA GPUs through the CUDA driver API (cudarc, with `libcuda` loaded at run
//! time): the devices `adrank doctor` lists and the device memory `adrank serve` exports. It
//! builds and runs everywhere; where there is no driver or no device, the answer says why.

use std::{sync::OnceLock, time::Duration};

use cudarc::driver::CudaContext;
use serde::Serialize;

/// One CUDA device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub ordinal: usize,
    pub name: String,
    /// Major and minor compute capability (9.0 for an H100 or H200).
    pub compute_capability: (i32, i32),
    pub total_bytes: u64,
    /// In use by every process on the device, as the driver reports it.
    pub used_bytes: u64,
}

/// The driver loaded, or why not: `libcuda` absent (no NVIDIA driver), or present but with no
/// usable device. cudarc panics when it finds no library, so the first load is tried once,
/// with the panic caught and its message kept off stderr.
fn driver() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let started = std::panic::catch_unwind(cudarc::driver::result::init);
            std::panic::set_hook(hook);
            match started {
                Err(_) => Err("no NVIDIA driver: libcuda.so.1 is not on the library path".into()),
                Ok(Err(e)) => Err(format!("the CUDA driver is installed but did not start: {e}")),
                Ok(Ok(())) => Ok(()),
            }
        })
        .clone()
}

/// The version of the NVIDIA kernel module, when one is loaded.
pub fn driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    let line = text.lines().next()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Thu ..."
    let after = line.split("Kernel Module").nth(1)?;
    after.split_whitespace().next().map(str::to_string)
}

/// Every device the driver sees, or why there is none. Each device's primary context is
/// retained while it is read (the one ONNX Runtime's CUDA provider also uses).
pub fn devices() -> Result<Vec<Device>, String> {
    driver()?;
    let count = CudaContext::device_count().map_err(|e| format!("counting the devices: {e}"))?;
    if count == 0 {
        return Err("the CUDA driver sees no device".into());
    }
    (0..count as usize).map(device).collect()
}

/// One device's figures.
pub fn device(ordinal: usize) -> Result<Device, String> {
    driver()?;
    let context = CudaContext::new(ordinal).map_err(|e| format!("device {ordinal}: opening its context: {e}"))?;
    read(&context)
}

fn read(context: &CudaContext) -> Result<Device, String> {
    let ordinal = context.ordinal();
    let failed = |what: &'static str| move |e: cudarc::driver::DriverError| format!("device {ordinal}: {what}: {e}");
    let (free, total) = context.mem_get_info().map_err(failed("reading its memory"))?;
    Ok(Device {
        ordinal,
        name: context.name().map_err(failed("reading its name"))?,
        compute_capability: context.compute_capability().map_err(failed("reading its compute capability"))?,
        total_bytes: total as u64,
        used_bytes: total.saturating_sub(free) as u64,
    })
}

/// How often `adrank serve` reads the device's memory.
pub const MEMORY_EVERY: Duration = Duration::from_secs(5);

/// Exports device `ordinal`'s memory (used and total) every [`MEMORY_EVERY`] for the life of
/// the process, on a thread of its own (driver calls block), holding the device's primary
/// context (ONNX Runtime's CUDA provider works in the same one, so holding it costs nothing
/// more). Returns why not when the device cannot be read at all.
pub fn export_memory(ordinal: usize) -> Result<(), String> {
    driver()?;
    let context = CudaContext::new(ordinal).map_err(|e| format!("device {ordinal}: opening its context: {e}"))?;
    crate::metrics::gpu_memory(&read(&context)?);
    std::thread::Builder::new()
        .name("gpu-memory".into())
        .spawn(move || {
            loop {
                std::thread::sleep(MEMORY_EVERY);
                match read(&context) {
                    Ok(device) => crate::metrics::gpu_memory(&device),
                    Err(e) => tracing::warn!(error = %e, "cannot read the GPU's memory"),
                }
            }
        })
        .map_err(|e| format!("starting the GPU memory thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the NVIDIA driver the answer is a reason, not a panic; with one,
    /// every device has a name, memory and a compute capability.
    #[test]
    fn devices_or_why_not() {
        let driver_loaded = std::path::Path::new("/proc/driver/nvidia/version").exists();
        match devices() {
            Ok(devices) => {
                assert!(driver_loaded, "devices without a kernel module: {devices:?}");
                for d in &devices {
                    assert!(!d.name.is_empty() && d.total_bytes > 0 && d.compute_capability.0 >= 3, "{d:?}");
                    assert!(d.used_bytes <= d.total_bytes, "{d:?}");
                }
                assert!(driver_version().is_some());
            }
            Err(why) => {
                // Without a kernel module, the library cannot be there to load.
                assert!(driver_loaded || why.starts_with("no NVIDIA driver"), "{why}");
                // Asked again, the same answer: the failed load is remembered, not retried.
                assert_eq!(devices(), Err(why));
            }
        }
    }
}
