//! TorchScript models through tch/libtorch, on CPU or CUDA.
use std::path::{Path, PathBuf};

use tch::{CModule, Device, Kind, Tensor};

use super::error::RuntimeError;
use super::manifest::{Layout, Manifest};

/// Where a model runs, as the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device by index.
    Cuda(usize),
    /// CUDA:0 when libtorch sees a GPU, else CPU.
    Auto,
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Option<DeviceSpec> {
        match s {
            "cpu" => Some(DeviceSpec::Cpu),
            "auto" => Some(DeviceSpec::Auto),
            "cuda" => Some(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceSpec::Cuda),
        }
    }

    /// The concrete device, or an error when CUDA is asked for and absent.
    pub fn resolve(self) -> Result<Device, RuntimeError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            // A machine without an NVIDIA device never opens the CUDA library.
            DeviceSpec::Auto => Ok(if super::cuda::available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            DeviceSpec::Cuda(i) => {
                let lib = super::cuda::load()
                    .map_err(|why| RuntimeError::DeviceUnavailable(format!("cuda:{i} ({why})")))?;
                if tch::Cuda::is_available() && i < tch::Cuda::device_count() as usize {
                    Ok(Device::Cuda(i))
                } else {
                    Err(RuntimeError::DeviceUnavailable(format!(
                        "cuda:{i} (libtorch's CUDA library {} is loaded, and sees {} CUDA devices)",
                        lib.display(),
                        tch::Cuda::device_count()
                    )))
                }
            }
        }
    }
}

/// Human name of a device: "cpu", "cuda:0".
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

#[derive(Debug)]
pub struct TorchModel {
    module: CModule,
    device: Device,
    /// Shape of one input row (without the batch dimension).
    row_shape: Vec<i64>,
    /// Values per output row: the classes, then a forecast head's.
    width: usize,
    path: PathBuf,
}

impl TorchModel {
    pub fn load(
        path: &Path,
        device: Device,
        row_shape: Vec<i64>,
        width: usize,
    ) -> Result<TorchModel, RuntimeError> {
        if !path.is_file() {
            return Err(RuntimeError::FileMissing {
                path: path.to_path_buf(),
            });
        }
        let module = CModule::load_on_device(path, device).map_err(|e| RuntimeError::TorchLoad {
            path: path.to_path_buf(),
            message: first_line(&e.to_string()),
        })?;
        Ok(TorchModel {
            module,
            device,
            row_shape,
            width,
            path: path.to_path_buf(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `rows` holds n prepared rows; returns n x width values (the probabilities, then a forecast head's).
    pub fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let _guard = tch::no_grad_guard();
        let err = |e: tch::TchError| RuntimeError::Inference {
            model: self.path.display().to_string(),
            message: first_line(&e.to_string()),
        };
        let mut shape = Vec::with_capacity(self.row_shape.len() + 1);
        shape.push(n as i64);
        shape.extend_from_slice(&self.row_shape);
        let input = Tensor::f_from_slice(rows)
            .map_err(err)?
            .f_reshape(&shape)
            .map_err(err)?;
        let input = if self.device == Device::Cpu {
            input
        } else {
            input.f_to_device(self.device).map_err(err)?
        };
        let out = self.module.forward_ts(&[input]).map_err(err)?;
        let size = out.size();
        if size != [n as i64, self.width as i64] {
            return Err(RuntimeError::Mismatch {
                path: self.path.clone(),
                message: format!("output shape {size:?}, expected [{n}, {}]", self.width),
            });
        }
        let out = out
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_contiguous())
            .map_err(err)?;
        let mut v = vec![0.0f32; n * self.width];
        out.f_copy_data(&mut v, n * self.width).map_err(err)?;
        Ok(v)
    }
}

impl super::Backend for TorchModel {
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        TorchModel::forward(self, rows, n)
    }

    fn device_name(&self) -> String {
        device_name(self.device)
    }
}

/// Loads the manifest's TorchScript file on the device, its row shape from the layout.
pub fn load(manifest: &Manifest, device: DeviceSpec) -> Result<Box<dyn super::Backend>, RuntimeError> {
    load_file(manifest, device, &manifest.model_path())
}

/// [`load`] of another file with the same network (an ONNX model's `torchscript_file`).
pub fn load_file(
    manifest: &Manifest,
    device: DeviceSpec,
    path: &Path,
) -> Result<Box<dyn super::Backend>, RuntimeError> {
    let (t, f) = (manifest.window as i64, manifest.features as i64);
    let row_shape = match manifest.layout {
        Layout::Sequence => vec![t, f],
        Layout::Channels => vec![f, t],
        Layout::Flat => vec![t * f],
    };
    let width = manifest.output_width();
    Ok(Box::new(TorchModel::load(
        path,
        device.resolve()?,
        row_shape,
        width,
    )?))
}

/// libtorch errors carry a TorchScript traceback and a C++ backtrace: keep the line that says
/// what went wrong (a raised exception's message when there is one).
fn first_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .find(|l| l.starts_with("RuntimeError:") || l.contains("Error: "))
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_else(|| s.trim().to_string())
}
