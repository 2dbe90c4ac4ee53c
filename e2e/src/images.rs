//! The images the real node runs, built here by `images/build.sh` (the same
//! definition `make images` uses): ferry's static sidecar, the pause
//! program, busybox for the tests' app containers and psql for the demo's.
//! Nothing is pulled; [`crate::RealNode`] imports the archives into its
//! containerd.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// The sandbox image containerd is configured with.
pub const PAUSE_IMAGE: &str = "ferry.local/pause:1";

/// The tests' app image: busybox-static with its applets in /bin.
pub const BUSYBOX_IMAGE: &str = "ferry.local/busybox:1";

/// The demo's app image: psql, and busybox for a shell.
pub const PSQL_IMAGE: &str = "ferry.local/psql:1";

/// The Rust target of ferry's static binaries.
const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Image archives built for a node.
#[derive(Debug, Clone)]
pub struct ImageSet {
    archives: Vec<PathBuf>,
}

impl ImageSet {
    /// The OCI archives, one per image.
    pub fn archives(&self) -> &[PathBuf] {
        &self.archives
    }

    /// Each image's name and archive size in bytes (the compressed layer
    /// and metadata: what a registry would store).
    pub fn sizes(&self) -> Vec<(String, u64)> {
        self.archives
            .iter()
            .map(|archive| {
                let name = archive
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(".oci.tar").to_owned())
                    .unwrap_or_default();
                let size = std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
                (name, size)
            })
            .collect()
    }
}

/// The sidecar image's reference, as the webhook injects it by default.
pub fn sidecar_image() -> String {
    format!(
        "ghcr.io/ferry-dev/ferry-sidecar:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Builds the static sidecar (release, as `make images` ships it) and the
/// sidecar, pause and busybox images into `out`. `controlplane_bin` holds
/// the pause program.
pub async fn build_node_images(
    controlplane_bin: &Path,
    out: &Path,
) -> Result<ImageSet, HarnessError> {
    let controlplane_bin = controlplane_bin.to_path_buf();
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let binaries = static_binaries(&["ferry-sidecar"], "release")?;
        build_images(
            &out,
            &["ferry-sidecar", "pause", "busybox"],
            &binaries,
            &controlplane_bin.join("pause"),
        )
    })
    .await
    .map_err(|e| HarnessError::Build(format!("building images: {e}")))?
}

/// Builds the operator's and the webhook's images (the broker is the
/// operator's binary) into `out`, from static builds in the `e2e-image`
/// profile: what the chart runs on the node with a pod network.
pub async fn build_component_images(out: &Path) -> Result<ImageSet, HarnessError> {
    let out = out.to_path_buf();
    let pause = crate::controlplane_bin_dir()?.join("pause");
    tokio::task::spawn_blocking(move || {
        let components = ["ferry-operator", "ferry-webhook"];
        let binaries = static_binaries(&components, "e2e-image")?;
        build_images(&out, &components, &binaries, &pause)
    })
    .await
    .map_err(|e| HarnessError::Build(format!("building images: {e}")))?
}

/// Builds the psql image into `out`. Only the demo runs it, so the
/// nodes' image sets leave it out; import it with [`crate::RealNode::import_images`].
pub async fn build_psql_image(out: &Path) -> Result<ImageSet, HarnessError> {
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // Neither input is read for psql.
        build_images(&out, &["psql"], Path::new(""), Path::new(""))
    })
    .await
    .map_err(|e| HarnessError::Build(format!("building the psql image: {e}")))?
}

/// Builds ferry's `packages` as static executables for the image (musl,
/// in cargo profile `profile`) and returns the directory holding them.
pub fn static_binaries(packages: &[&str], profile: &str) -> Result<PathBuf, HarnessError> {
    let target_dir = target_dir()?;
    ensure_static_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--locked", "--profile", profile])
        .args(["--target", STATIC_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for package in packages {
        build.args(["-p", package, "--bin", package]);
    }
    // ring compiles a little C. Without a musl cross compiler the host gcc
    // does (as images/check.sh explains).
    if which("x86_64-linux-musl-gcc").is_none() {
        let cc = if which("musl-gcc").is_some() {
            "musl-gcc"
        } else {
            "gcc"
        };
        build.env("CC_x86_64_unknown_linux_musl", cc);
    }
    let status = build.status().map_err(|source| HarnessError::Io {
        what: "running cargo build for the static binaries".into(),
        source,
    })?;
    if !status.success() {
        return Err(HarnessError::Build(format!(
            "cargo build --target {STATIC_TARGET} --profile {profile} of {packages:?} failed: {status}"
        )));
    }
    Ok(target_dir.join(STATIC_TARGET).join(profile))
}

/// Runs `images/build.sh` for `images` into `out`.
pub fn build_images(
    out: &Path,
    images: &[&str],
    ferry_bin_dir: &Path,
    pause: &Path,
) -> Result<ImageSet, HarnessError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(out)
        .args(images)
        .env("FERRY_BIN_DIR", ferry_bin_dir)
        .env("PAUSE_BIN", pause)
        .env("IMAGE_REPOSITORY", "ghcr.io/ferry-dev")
        .env("IMAGE_TAG", env!("CARGO_PKG_VERSION"))
        .output()
        .map_err(|source| HarnessError::Io {
            what: format!("running {}", script.display()),
            source,
        })?;
    if !output.status.success() {
        return Err(HarnessError::Build(format!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(ImageSet {
        archives: String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(PathBuf::from)
            .collect(),
    })
}

/// The cargo target directory the running test or binary was built in.
fn target_dir() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // Tests run from <target>/<profile>/deps/, binaries from <target>/<profile>/.
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        what: "locating the running executable".into(),
        source,
    })?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop();
    Ok(dir)
}

fn ensure_static_target() -> Result<(), HarnessError> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == STATIC_TARGET)
        })
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", STATIC_TARGET])
        .status()
        .map_err(|source| HarnessError::Io {
            what: format!("running rustup target add {STATIC_TARGET}"),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Build(format!(
            "rustup target add {STATIC_TARGET} failed: {status}"
        )))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}
