//! Guest assets, built once and cached under `<target>/vm-assets/<kver>/`:
//! - the kernel: Debian's `/boot/vmlinuz-<kver>`, decompressed to an ELF
//!   vmlinux when the kernel has `CONFIG_PVH=y`, because PVH boot skips the
//!   bzImage's self-decompression (about 2.4 s of a 4.6 s boot under TCG);
//!   the bzImage itself otherwise;
//! - an uncompressed initramfs (uncompressed unpacks faster under TCG than
//!   anything the guest would have to decompress) with busybox-static,
//!   decompressed kernel modules for virtio-pci, virtiofs, fuse, overlay and
//!   9p, and tests/vm/{init.sh,vufs.sh,hostrun}.
//!
//! Cache keys include the inputs' sizes and mtimes, and the initramfs key
//! hashes the guest scripts too, so editing tests/vm/*.sh rebuilds it.

use super::{cpio::Cpio, target_dir, Context, Result};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

const INIT_SH: &str = include_str!("../vm/init.sh");
const VUFS_SH: &str = include_str!("../vm/vufs.sh");
const HOSTRUN: &str = include_str!("../vm/hostrun");

/// Bump when the initramfs layout changes in a way the key would not see.
const LAYOUT_VERSION: u32 = 1;

/// Modules the guest loads; `modprobe --show-depends` adds their deps
/// (virtio, virtio_ring, fuse, netfs, fscache, 9pnet...).
const MODULES: &[&str] = &["virtio_pci", "virtiofs", "overlay", "9p", "9pnet_virtio"];

/// What QEMU boots.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Kernel release, e.g. `6.1.0-48-amd64`.
    pub kver: String,
    /// The ELF vmlinux (when `pvh`) or the bzImage.
    pub kernel: PathBuf,
    pub pvh: bool,
    pub initramfs: PathBuf,
}

/// The guest assets, built on first use (once per process; the files are
/// reused across processes through the cache).
pub fn assets() -> Result<&'static Assets> {
    static ASSETS: OnceLock<Result<Assets>> = OnceLock::new();
    ASSETS.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<Assets> {
    let (kver, bzimage) = find_kernel()?;
    let dir = target_dir().join("vm-assets").join(&kver);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (kernel, pvh) = kernel_image(&kver, &bzimage, &dir)?;
    let initramfs = initramfs(&kver, &dir)?;
    Ok(Assets {
        kver,
        kernel,
        pvh,
        initramfs,
    })
}

/// `$VUFSD_VM_KERNEL`, else the newest `/boot/vmlinuz-*` whose modules
/// include 9p (linux-image-cloud-amd64 has none).
fn find_kernel() -> Result<(String, PathBuf)> {
    if let Ok(path) = std::env::var("VUFSD_VM_KERNEL") {
        let path = PathBuf::from(path);
        let kver = kver_of(&path).ok_or_else(|| {
            format!(
                "VUFSD_VM_KERNEL={}: expected a /boot/vmlinuz-<version>",
                path.display()
            )
        })?;
        return Ok((kver, path));
    }
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .context("listing /boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| kver_of(&p).map(|v| (v, p)))
        .filter(|(v, _)| {
            Path::new("/lib/modules")
                .join(v)
                .join("kernel/fs/9p")
                .is_dir()
        })
        .collect();
    found.sort_by_key(|(v, _)| version_key(v));
    found.pop().ok_or_else(|| {
        "no /boot/vmlinuz-<ver> with 9p modules in /lib/modules/<ver> \
         (apt-get install linux-image-amd64)"
            .to_string()
    })
}

fn kver_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("vmlinuz-").map(str::to_string)
}

/// "6.1.0-48-amd64" -> [6, 1, 0, 48], so that 6.10 sorts after 6.9.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The ELF vmlinux for PVH boot if the kernel supports it and extraction
/// works, else the bzImage as is.
fn kernel_image(kver: &str, bzimage: &Path, dir: &Path) -> Result<(PathBuf, bool)> {
    let config = std::fs::read_to_string(format!("/boot/config-{kver}")).unwrap_or_default();
    let pvh_off = std::env::var("VUFSD_VM_PVH").as_deref() == Ok("0");
    if pvh_off || !config.lines().any(|l| l == "CONFIG_PVH=y") {
        return Ok((bzimage.to_path_buf(), false));
    }
    let out = dir.join(format!(
        "vmlinux-{}",
        short_hash(&[stamp(bzimage)?.as_bytes()])
    ));
    if out.is_file() {
        return Ok((out, true));
    }
    let bz = std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    match extract_vmlinux(&bz) {
        Ok(elf) => {
            write_atomic(&out, &elf)?;
            Ok((out, true))
        }
        Err(e) => {
            eprintln!("note: booting the bzImage (slower): cannot extract vmlinux: {e}");
            Ok((bzimage.to_path_buf(), false))
        }
    }
}

/// Decompress the payload of an x86 bzImage. The boot protocol (>= 2.08)
/// gives its exact place: `payload_offset`/`payload_length` in the setup
/// header, counted from the protected-mode code after the setup sectors.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let u16_at = |o: usize| bz.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        bz.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bz.get(0x202..0x206) != Some(b"HdrS") || u16_at(0x206).unwrap_or(0) < 0x208 {
        return Err("not a bzImage with boot protocol >= 2.08".into());
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let offset = u32_at(0x248).ok_or("truncated header")? as usize;
    let length = u32_at(0x24c).ok_or("truncated header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = bz
        .get(start..start + length)
        .ok_or("payload lies outside the file")?;
    let cmd: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        [b'B', b'Z', b'h', ..] => &["bzip2", "-dc"],
        [0x5d, 0, 0, ..] => &["xz", "-dc", "--format=lzma"],
        [0x02, 0x21, 0x4c, 0x18, ..] => &["lz4", "-dc"],
        _ => return Err("unknown payload compression".into()),
    };
    // The kernel appends the decompressed size after the stream, which some
    // tools call trailing garbage: judge by the output, not the exit status.
    let elf = filter(cmd, payload)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(format!("`{}` did not produce an ELF file", cmd.join(" ")));
    }
    Ok(elf)
}

/// Run `cmd` with `input` on stdin and return its stdout.
fn filter(cmd: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {} (apt-get install xz-utils zstd)", cmd[0]))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let output = std::thread::scope(|s| {
        // Feed stdin from a thread while wait_with_output drains stdout.
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })
    .with_context(|| format!("running {}", cmd.join(" ")))?;
    Ok(output.stdout)
}

/// Build (or reuse) the initramfs for `kver`.
fn initramfs(kver: &str, dir: &Path) -> Result<PathBuf> {
    let busybox = find_busybox()?;
    let modules = module_files(kver)?;
    let mut key: Vec<Vec<u8>> = vec![
        LAYOUT_VERSION.to_le_bytes().to_vec(),
        INIT_SH.into(),
        VUFS_SH.into(),
        HOSTRUN.into(),
        stamp(&busybox)?.into(),
    ];
    for m in &modules {
        key.push(stamp(m)?.into());
    }
    let parts: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
    let out = dir.join(format!("initramfs-{}.cpio", short_hash(&parts)));
    if !out.is_file() {
        write_atomic(&out, &initramfs_bytes(&busybox, &modules)?)?;
    }
    Ok(out)
}

fn initramfs_bytes(busybox: &Path, modules: &[PathBuf]) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib/modules",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "mnt",
        "host",
        "test",
        "etc",
        "root",
    ] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before /init runs.
    c.char_dev("dev/console", 0o600, 5, 1);
    let bb = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    c.file("bin/busybox", 0o755, &bb);
    c.file("init", 0o755, INIT_SH.as_bytes());
    c.file("lib/vufs.sh", 0o644, VUFS_SH.as_bytes());
    c.file("bin/hostrun", 0o755, HOSTRUN.as_bytes());
    let mut order = String::new();
    for m in modules {
        let name = module_name(m)?;
        c.file(&format!("lib/modules/{name}"), 0o644, &read_module(m)?);
        order.push_str(&name);
        order.push('\n');
    }
    c.file("lib/modules/modules.order", 0o644, order.as_bytes());
    Ok(c.finish())
}

/// The busybox binary, which must be static: the initramfs has no libc.
fn find_busybox() -> Result<PathBuf> {
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("no busybox (apt-get install busybox-static)")?;
    let elf = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if has_interpreter(&elf) {
        return Err(format!(
            "{} is dynamically linked (apt-get install busybox-static)",
            path.display()
        ));
    }
    Ok(path)
}

/// Whether a 64-bit ELF file has a PT_INTERP program header (is dynamic).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let rd = |o: usize, n: usize| -> u64 {
        elf.get(o..o + n)
            .map(|b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
            .unwrap_or(0)
    };
    let (phoff, phentsize, phnum) = (rd(0x20, 8) as usize, rd(0x36, 2) as usize, rd(0x38, 2));
    (0..phnum as usize).any(|i| rd(phoff + i * phentsize, 4) as u32 == PT_INTERP)
}

/// The module files for MODULES and their dependencies, in load order.
fn module_files(kver: &str) -> Result<Vec<PathBuf>> {
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("modprobe");
    let mut files: Vec<PathBuf> = Vec::new();
    for m in MODULES {
        let out = Command::new(modprobe)
            .args(["-S", kver, "--show-depends", m])
            .output()
            .with_context(|| format!("running {modprobe} (apt-get install kmod)"))?;
        if !out.status.success() {
            return Err(format!(
                "modprobe -S {kver} --show-depends {m}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // Lines are `insmod /lib/modules/.../x.ko[.xz] [params]` or `builtin x`.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut words = line.split_whitespace();
            if let (Some("insmod"), Some(path)) = (words.next(), words.next()) {
                let path = PathBuf::from(path);
                if !files.contains(&path) {
                    files.push(path);
                }
            }
        }
    }
    Ok(files)
}

/// `fuse.ko.xz` -> `fuse.ko`.
fn module_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("odd module path {}", path.display()))?;
    let stem = name.split(".ko").next().unwrap_or(name);
    Ok(format!("{stem}.ko"))
}

/// A module's bytes, decompressed: busybox insmod loads plain ELF only.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let cmd: &[&str] = if name.ends_with(".xz") {
        &["xz", "-dc"]
    } else if name.ends_with(".zst") {
        &["zstd", "-dcq"]
    } else if name.ends_with(".gz") {
        &["gzip", "-dc"]
    } else {
        return Ok(raw);
    };
    let elf = filter(cmd, &raw)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(format!("decompressing {} gave no ELF", path.display()));
    }
    Ok(elf)
}

/// Identity of an input file for cache keys: path, size and mtime.
fn stamp(path: &Path) -> Result<String> {
    let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}:{}:{mtime}", path.display(), md.len()))
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Write via a temporary file and rename, so that a concurrent reader (a
/// parallel test process) never sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
