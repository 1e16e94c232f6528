//! Embeds LibTorch's library directory as an rpath into this crate's test binaries, so they run
//! from a plain shell without LD_LIBRARY_PATH. torch-sys exports the directory to its direct
//! dependents only (DEP_TCH_LIBTORCH_LIB), hence the optional torch-sys dependency.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
