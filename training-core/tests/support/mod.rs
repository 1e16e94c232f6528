//! What the PyTorch comparisons share: finding a python that imports torch ([`TorchPython`]) and
//! replaying grokforge runs in PyTorch ([`paired`]). Used by `tests/pytorch_export.rs`,
//! `tests/pytorch_trajectory.rs`, `benches/trajectory.rs` and `benches/throughput.rs` (through
//! `#[path]`).

#![allow(dead_code)] // each test and bench binary uses its own part of this module

pub mod paired;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of the LibTorch virtualenv (`scripts/libtorch-env.sh`) and, for its cpu flavour,
/// the CUDA stand-in libraries `scripts/torch-python.sh` built so `import torch` loads.
/// `GROKFORGE_TORCH_PYTHON` names another python.
pub struct TorchPython {
    pub python: PathBuf,
    stubs: Option<PathBuf>,
}

impl TorchPython {
    /// The python, checked to import torch; otherwise why not.
    pub fn find() -> Result<Self, String> {
        let found = if let Ok(python) = std::env::var("GROKFORGE_TORCH_PYTHON") {
            TorchPython {
                python: PathBuf::from(python),
                stubs: None,
            }
        } else {
            let libtorch = std::env::var("LIBTORCH")
                .ok()
                .or_else(|| option_env!("LIBTORCH").map(str::to_string))
                .ok_or("no LibTorch virtualenv python (LIBTORCH unset?)")?;
            // $venv/lib/python3.X/site-packages/torch
            let venv = Path::new(&libtorch)
                .ancestors()
                .nth(4)
                .ok_or("LIBTORCH is not inside a virtualenv")?;
            let stubs = venv.join("grokforge-cuda-stubs");
            TorchPython {
                python: venv.join("bin/python"),
                stubs: stubs.is_dir().then_some(stubs),
            }
        };
        let probe = found
            .command()
            .args(["-c", "import torch"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", found.python.display()))?;
        if !probe.status.success() {
            let stderr = String::from_utf8_lossy(&probe.stderr);
            return Err(format!(
                "{} cannot import torch (run scripts/torch-python.sh): {}",
                found.python.display(),
                stderr.lines().last().unwrap_or("")
            ));
        }
        Ok(found)
    }

    /// A command running this python, with the stand-in libraries on its library path.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.python);
        if let Some(stubs) = &self.stubs {
            let mut path = stubs.display().to_string();
            if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
                path = format!("{path}:{old}");
            }
            command.env("LD_LIBRARY_PATH", path);
        }
        command
    }
}

/// The python, or `None` after saying why the check `what` cannot run here. Fails instead when
/// `GROKFORGE_REQUIRE_TORCH=1`, so CI cannot pass by skipping.
pub fn torch_or_skip(what: &str) -> Option<TorchPython> {
    match TorchPython::find() {
        Ok(python) => Some(python),
        Err(reason) => {
            if std::env::var("GROKFORGE_REQUIRE_TORCH").as_deref() == Ok("1") {
                panic!("{what} needs torch (GROKFORGE_REQUIRE_TORCH=1): {reason}");
            }
            eprintln!("skipping {what}: {reason}");
            None
        }
    }
}

/// A script of `training-core/benches/`.
pub fn bench_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(name)
}
