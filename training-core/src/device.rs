//! Choosing and describing the compute device.
//!
//! burn 0.22 picks its backend from the run-time [`Device`]; library code receives one and never
//! chooses. These helpers let the binary (and the node, when it reports what it trains on) turn
//! `cpu` / `cuda:N` into a device and back into words.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// The highest CUDA index [`backend_description`] probes for when naming a device.
const MAX_CUDA_INDEX: usize = 16;

/// Parses `cpu` or `cuda:N` into a device of the backend this build was compiled with.
///
/// With the `tch` feature `cpu` is LibTorch on the CPU and `cuda:N` LibTorch's CUDA device `N`
/// (refused when LibTorch sees no such GPU). With only `flex` (or only `ndarray`, kept for the
/// backend comparison bench), `cpu` is that pure-Rust backend and CUDA is refused. The device has no autodiff: training code calls `.autodiff()` itself.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("cpu") {
        return cpu_device();
    }
    let Some(index) = spec
        .strip_prefix("cuda:")
        .or_else(|| spec.strip_prefix("CUDA:"))
    else {
        return Err(Error::Device {
            device: spec.to_string(),
            reason: "expected `cpu` or `cuda:N`".to_string(),
        });
    };
    let index: usize = index.parse().map_err(|_| Error::Device {
        device: spec.to_string(),
        reason: "the CUDA index must be a non-negative integer".to_string(),
    })?;
    cuda_device(spec, index)
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn marks LibTorch deprecated; it is our production backend.
fn cpu_device() -> Result<Device> {
    Ok(Device::libtorch())
}

#[cfg(all(not(feature = "tch"), feature = "flex"))]
fn cpu_device() -> Result<Device> {
    Ok(Device::flex())
}

#[cfg(all(not(feature = "tch"), not(feature = "flex"), feature = "ndarray"))]
#[allow(deprecated)] // burn 0.22 deprecates ndarray for flex; built only to compare the two.
fn cpu_device() -> Result<Device> {
    Ok(Device::ndarray())
}

#[cfg(feature = "tch")]
#[allow(deprecated)]
fn cuda_device(spec: &str, index: usize) -> Result<Device> {
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if index >= count {
        return Err(Error::Device {
            device: spec.to_string(),
            reason: format!(
                "LibTorch sees {count} CUDA device(s); this build of torch may be CPU-only"
            ),
        });
    }
    Ok(Device::libtorch_cuda(index))
}

#[cfg(not(feature = "tch"))]
fn cuda_device(spec: &str, _index: usize) -> Result<Device> {
    Err(Error::Device {
        device: spec.to_string(),
        reason: "this build has no CUDA backend (built without the `tch` feature)".to_string(),
    })
}

/// Says in words which backend and device `device` is, with the thread count where it applies:
/// `libtorch cpu (2 threads)`, `libtorch cuda:0`, `flex cpu (pure Rust)`.
pub fn backend_description(device: &Device) -> String {
    describe(device).unwrap_or_else(|| format!("{device:?}"))
}

#[allow(deprecated)]
fn describe(device: &Device) -> Option<String> {
    #[cfg(feature = "tch")]
    {
        if *device == Device::libtorch() {
            return Some(format!(
                "libtorch {} cpu ({} threads)",
                torch_version(),
                tch::utils::get_num_threads()
            ));
        }
        if let Some(index) = (0..MAX_CUDA_INDEX).find(|i| *device == Device::libtorch_cuda(*i)) {
            return Some(format!("libtorch {} cuda:{index}", torch_version()));
        }
    }
    #[cfg(feature = "flex")]
    {
        if *device == Device::flex() {
            return Some("flex cpu (pure Rust)".to_string());
        }
    }
    #[cfg(feature = "ndarray")]
    {
        if *device == Device::ndarray() {
            return Some("ndarray cpu (pure Rust)".to_string());
        }
    }
    let _ = (device, MAX_CUDA_INDEX);
    None
}

#[cfg(feature = "tch")]
fn torch_version() -> &'static str {
    // torch-sys 0.22 is built against exactly this release (see scripts/libtorch-env.sh).
    "2.9.0"
}

/// Sets the number of threads LibTorch uses for intra-op parallelism (a no-op without `tch`).
///
/// Results are bit-identical across runs only at the same thread count, so a run records the
/// count it used and a resumed run sets it again.
pub fn set_num_threads(threads: usize) {
    #[cfg(feature = "tch")]
    tch::utils::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
    #[cfg(not(feature = "tch"))]
    let _ = threads;
}

/// The number of threads LibTorch uses now (1 without `tch`).
pub fn num_threads() -> usize {
    #[cfg(feature = "tch")]
    {
        usize::try_from(tch::utils::get_num_threads()).unwrap_or(1)
    }
    #[cfg(not(feature = "tch"))]
    {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_is_described() {
        let device = parse_device("cpu").unwrap();
        let text = backend_description(&device);
        assert!(text.contains("cpu"), "{text}");
        // Autodiff does not change what the device is.
        assert_eq!(backend_description(&device.autodiff()), text);
    }

    #[test]
    fn bad_device_strings_are_refused() {
        for bad in ["gpu", "cuda", "cuda:x", "cuda:-1", ""] {
            assert!(
                matches!(parse_device(bad), Err(Error::Device { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn absent_cuda_index_is_refused() {
        assert!(parse_device("cuda:999").is_err());
    }
}
