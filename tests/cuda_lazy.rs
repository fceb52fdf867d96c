//! Issue 17, lever 6: libtorch's CUDA library is opened only when a CUDA device is asked for.
//! One test in its own binary, so nothing else in the process maps CUDA first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::path::PathBuf;

use augur_runtime::{DeviceSpec, Manifest, Model, ModelKind};

/// The CUDA libraries of this process's memory map: libtorch's and NVIDIA's big ones. (The
/// CUDA runtime, libcudart, under 1 MB, is a dependency of a CUDA build's libtorch_cpu.so
/// itself and is always there.)
fn cuda_mapped() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.find('/').map(|i| l[i..].to_string()))
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or("");
            name.starts_with("libtorch_cuda")
                || name.starts_with("libc10_cuda")
                || name.starts_with("libcusparse")
                || name.starts_with("libnccl")
                || name.starts_with("libcudnn")
                || name.starts_with("libcublas")
        })
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

#[test]
fn test_cpu_models_never_map_cuda_and_asking_for_cuda_opens_it_or_says_why() {
    tch::set_num_threads(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut torch_members = 0;
    for dir in Manifest::discover(&root).unwrap() {
        let model = Model::load(&dir, DeviceSpec::Cpu).unwrap();
        let len = model.preprocessor().row_len();
        model.predict_all(&vec![0.1f32; len], 1).unwrap();
        if matches!(model.manifest().kind, ModelKind::TorchScript | ModelKind::Onnx) {
            torch_members += 1;
        }
        // `auto` on a machine without an NVIDIA device stays on the CPU without opening it.
        if !augur_runtime::cuda::nvidia_device_present() {
            assert_eq!(DeviceSpec::Auto.resolve().unwrap(), tch::Device::Cpu);
        }
    }
    assert!(
        torch_members >= 2,
        "the torch members load through ONNX Runtime or libtorch"
    );
    assert_eq!(
        cuda_mapped(),
        Vec::<String>::new(),
        "a CPU-only run maps no CUDA library"
    );
    assert_eq!(augur_runtime::cuda::loaded(), None);

    // Asked for, it is opened (from beside libtorch_cpu.so), and the answer is the device or a
    // reason that names it and the library.
    match DeviceSpec::Cuda(0).resolve() {
        Ok(d) => assert_eq!(d, tch::Device::Cuda(0)),
        Err(e) => {
            let e = e.to_string();
            println!("{e}");
            // Refused only where there is no GPU: on an NVIDIA machine the CPU work above
            // must not have switched CUDA off (libtorch decides once, at its first CUDA query).
            assert!(!augur_runtime::cuda::nvidia_device_present(), "{e}");
            assert!(e.contains("cuda:0"), "{e}");
            assert!(e.contains("libtorch_cuda.so"), "{e}");
        }
    }
    let lib = augur_runtime::cuda::loaded();
    if let Some(lib) = &lib {
        assert!(lib.ends_with("libtorch_cuda.so"), "{}", lib.display());
        assert!(
            cuda_mapped().iter().any(|p| p.ends_with("libtorch_cuda.so")),
            "{:?}",
            cuda_mapped()
        );
        // Opened once: asking again gives the same library.
        let _ = DeviceSpec::Cuda(0).resolve();
        assert_eq!(augur_runtime::cuda::loaded().as_ref(), Some(lib));
    }
    println!("CUDA library after the ask: {lib:?}; mapped: {:?}", cuda_mapped());
}
