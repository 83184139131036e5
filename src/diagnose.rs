//! Why a GPU is not visible to Vulkan, and how to fix it: the findings behind `conquer info`
//! and the error of `--backend gpu` on a machine without a usable hardware adapter. Looks at
//! files and the environment only (the Vulkan loader's library, its driver files, NVIDIA's
//! and DRM's device files, the container's driver capabilities); lists what it finds and
//! names the missing piece. No sockets, no devices opened.

use std::path::{Path, PathBuf};

/// What the machine offers the Vulkan loader, as found on disk and in the environment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Findings {
    /// Where libvulkan.so.1 was found, if anywhere.
    pub loader: Option<PathBuf>,
    /// Folders searched for driver (ICD) files, and the files found there.
    pub icd_dirs: Vec<PathBuf>,
    pub icd_files: Vec<PathBuf>,
    /// Driver files named by VK_DRIVER_FILES / VK_ICD_FILENAMES that do not exist.
    pub icd_missing: Vec<PathBuf>,
    /// An NVIDIA GPU visible to the kernel (/proc/driver/nvidia, /dev/nvidia0).
    pub nvidia_present: bool,
    /// NVIDIA_DRIVER_CAPABILITIES in a container, when set.
    pub nvidia_capabilities: Option<String>,
    /// DRM render nodes (/dev/dri/renderD*), and whether this user can open them.
    pub render_nodes: Vec<PathBuf>,
    pub render_nodes_usable: bool,
}

/// Standard places for the loader library.
const LIB_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/local/lib",
];

/// Where the loader looks for driver files, in its own order.
fn icd_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let config = std::env::var("XDG_CONFIG_DIRS").unwrap_or_else(|_| "/etc/xdg".into());
    let data =
        std::env::var("XDG_DATA_DIRS").unwrap_or_else(|_| "/usr/local/share:/usr/share".into());
    for base in config.split(':').chain(["/etc"]).chain(data.split(':')) {
        if !base.is_empty() {
            let dir = Path::new(base).join("vulkan/icd.d");
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Looks at this machine.
pub fn findings() -> Findings {
    let mut f = Findings::default();
    let ld_path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    f.loader = ld_path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(LIB_DIRS)
        .map(|d| Path::new(d).join("libvulkan.so.1"))
        .find(|p| p.exists());
    let named = std::env::var("VK_DRIVER_FILES")
        .or_else(|_| std::env::var("VK_ICD_FILENAMES"))
        .ok();
    match named {
        Some(list) => {
            for file in list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from) {
                if file.is_dir() {
                    f.icd_dirs.push(file.clone());
                    f.icd_files.extend(json_files(&file));
                } else if file.exists() {
                    f.icd_files.push(file);
                } else {
                    f.icd_missing.push(file);
                }
            }
        }
        None => {
            f.icd_dirs = icd_dirs();
            for dir in &f.icd_dirs {
                f.icd_files.extend(json_files(dir));
            }
        }
    }
    f.nvidia_present =
        Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists();
    f.nvidia_capabilities = std::env::var("NVIDIA_DRIVER_CAPABILITIES").ok();
    if let Ok(entries) = std::fs::read_dir("/dev/dri") {
        f.render_nodes = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("renderD"))
            })
            .collect();
        f.render_nodes.sort();
        f.render_nodes_usable = f.render_nodes.iter().any(|p| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .is_ok()
        });
    }
    f
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn is_software_icd(file: &Path) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.contains("lvp") || name.contains("swiftshader") || name.contains("llvmpipe")
}

impl Findings {
    /// Why no hardware adapter is visible, each reason with its fix; `software` names the
    /// software adapters that were found. Empty when nothing is amiss on disk.
    pub fn explain(&self, software: &[String]) -> Vec<String> {
        let mut why = Vec::new();
        if self.loader.is_none() {
            why.push(
                "no Vulkan loader: libvulkan.so.1 is not installed (Debian/Ubuntu: apt install libvulkan1; \
                 Fedora: dnf install vulkan-loader)"
                    .to_owned(),
            );
        }
        for file in &self.icd_missing {
            why.push(format!(
                "VK_DRIVER_FILES/VK_ICD_FILENAMES names {}, which does not exist: unset it or point it at \
                 the driver's .json file",
                file.display()
            ));
        }
        if self.icd_files.is_empty() {
            let dirs: Vec<String> = self
                .icd_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            why.push(format!(
                "no Vulkan driver (ICD) files in {}: install the GPU driver's Vulkan part (NVIDIA: the \
                 driver's libnvidia-gl package; AMD/Intel: mesa-vulkan-drivers)",
                if dirs.is_empty() { "the named places".to_owned() } else { dirs.join(", ") }
            ));
        }
        let has_nvidia_icd = self.icd_files.iter().any(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("nvidia"))
        });
        if self.nvidia_present && !has_nvidia_icd {
            let container = match &self.nvidia_capabilities {
                Some(caps) if !caps.contains("graphics") && !caps.contains("all") => format!(
                    "; in this container NVIDIA_DRIVER_CAPABILITIES={caps} lacks `graphics`: start it with \
                     NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics (or all) so the runtime mounts the \
                     Vulkan driver"
                ),
                _ => String::new(),
            };
            why.push(format!(
                "an NVIDIA GPU is present (the kernel driver is loaded) but Vulkan has no NVIDIA driver file \
                 (nvidia_icd.json): install the driver's Vulkan/GL part (e.g. libnvidia-gl-NNN){container}"
            ));
        }
        if !self.render_nodes.is_empty() && !self.render_nodes_usable {
            why.push(format!(
                "this user cannot open the GPU's render node ({}): add it to the `render` and `video` groups",
                self.render_nodes[0].display()
            ));
        }
        let only_software =
            !self.icd_files.is_empty() && self.icd_files.iter().all(|f| is_software_icd(f));
        if only_software || (!software.is_empty() && why.is_empty()) {
            why.push(format!(
                "only software adapters are visible ({}): Vulkan sees no hardware GPU{}",
                if software.is_empty() {
                    "none listed".to_owned()
                } else {
                    software.join("; ")
                },
                if self.render_nodes.is_empty() && !self.nvidia_present {
                    " and the kernel shows none either (no /dev/dri render node, no NVIDIA driver)"
                } else {
                    ""
                }
            ));
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_piece_is_named_with_its_fix() {
        let bare = Findings::default();
        let why = bare.explain(&[]).join("\n");
        assert!(why.contains("libvulkan1"), "{why}");
        assert!(why.contains("no Vulkan driver (ICD) files"), "{why}");

        let nvidia_in_container = Findings {
            loader: Some("/usr/lib/libvulkan.so.1".into()),
            icd_files: vec!["/usr/share/vulkan/icd.d/lvp_icd.x86_64.json".into()],
            nvidia_present: true,
            nvidia_capabilities: Some("compute,utility".into()),
            ..Findings::default()
        };
        let why = nvidia_in_container.explain(&["llvmpipe".into()]).join("\n");
        assert!(why.contains("nvidia_icd.json"), "{why}");
        assert!(
            why.contains("NVIDIA_DRIVER_CAPABILITIES=compute,utility lacks `graphics`"),
            "{why}"
        );
        assert!(why.contains("only software adapters"), "{why}");
    }
}
