//! Writes, swaps and wipes secrets in the secrets volume, in the layout of
//! Kubernetes' atomic writer, one directory per secret:
//!
//! ```text
//! <root>/<secret>/..<generation>/<file>   the content, read-only
//! <root>/<secret>/..data -> ..<generation>
//! <root>/<secret>/<file> -> ..data/<file>
//! <root>/..ferry-ready                    readiness marker, nothing secret
//! ```
//!
//! A new generation is written and fsynced in full before `..data` is
//! swapped to it by renaming a temporary symlink, so a reader sees all old
//! or all new files. The old generation is then *retired*: renamed out of
//! the secret's directory into `<root>/..ferry-retired/`, so no path leads
//! to it any more, and overwritten with zeros only after [`RETIRE_GRACE`]
//! (or at exit). A reader that opened a file before the swap or the wipe
//! so reads its complete old content, never zeros in the middle.
//!
//! Permissions: files 0400 and generations 0500, or 0440 and 0550 with the
//! pod's fsGroup as their group. The secret's directory keeps its owner's
//! write bit (0700 or 0750): the writer renames into it; the owner is the
//! sidecar's uid, which may change modes anyway. A generation is made
//! writable again only to wipe it.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::names::{NameError, check_file_name, check_object_name};
use crate::random::unique_suffix;
use ferry_contract::READY_MARKER;

/// The symlink naming the current generation, as Kubernetes names it.
pub const DATA_LINK: &str = "..data";

/// Where replaced and wiped generations wait for their grace period to end,
/// at the volume's root: hidden, and 0700 to the sidecar.
pub const RETIRED_DIR: &str = "..ferry-retired";

/// How long a replaced or wiped generation keeps its content for readers
/// that opened it before, before it is overwritten with zeros.
pub const RETIRE_GRACE: Duration = Duration::from_secs(30);

const DATA_LINK_TMP: &str = "..data_tmp";
const FILE_LINK_TMP: &str = "..link_tmp";
const READY_MARKER_TMP: &str = "..ferry-ready.tmp";

/// One file of a secret, its content wiped from memory when dropped.
pub struct SecretFile {
    /// The file's name inside the secret's directory.
    pub name: String,
    /// The decoded content. Secret: never logged.
    pub content: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("name", &self.name)
            .field("len", &self.content.len())
            .finish()
    }
}

/// What writing a secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new generation is in place.
    Swapped,
    /// The current generation already held exactly these files.
    Unchanged,
}

/// Why the volume could not be changed as asked.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A secret or file name would not stay in its directory.
    #[error("refusing secret {secret:?}: {source}")]
    Name {
        /// The secret the name belongs to.
        secret: String,
        /// What is wrong with the name.
        source: NameError,
    },
    /// A file system call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Something that is not a plain directory sits where one must be.
    #[error("{} is not a directory the sidecar made (a symlink or file is in the way)", path.display())]
    NotADirectory {
        /// The path in the way.
        path: PathBuf,
    },
    /// The fsGroup could not be set and the group is not already right.
    #[error(
        "cannot give {} the pod's fsGroup {gid} (it has group {actual}): run the sidecar with that group or let the volume's setgid bit apply",
        path.display()
    )]
    Group {
        /// The file or directory.
        path: PathBuf,
        /// The wanted group.
        gid: u32,
        /// Its group now.
        actual: u32,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// The secrets volume the sidecar owns.
#[derive(Debug, Clone)]
pub struct SecretVolume {
    root: PathBuf,
    fs_group: Option<u32>,
    /// Retired generations and when each may be zeroed.
    retired: Arc<Mutex<Vec<(Instant, PathBuf)>>>,
}

impl SecretVolume {
    /// The volume mounted at `root`; `fs_group` makes files group-readable.
    pub fn new(root: impl Into<PathBuf>, fs_group: Option<u32>) -> Self {
        Self {
            root: root.into(),
            fs_group,
            retired: Arc::default(),
        }
    }

    fn retired(&self) -> MutexGuard<'_, Vec<(Instant, PathBuf)>> {
        // A panic elsewhere cannot leave the list half-changed: every
        // change is one push or one retain.
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The volume's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file_mode(&self) -> u32 {
        if self.fs_group.is_some() {
            0o440
        } else {
            0o400
        }
    }

    fn generation_mode(&self) -> u32 {
        if self.fs_group.is_some() {
            0o550
        } else {
            0o500
        }
    }

    fn secret_dir_mode(&self) -> u32 {
        if self.fs_group.is_some() {
            0o750
        } else {
            0o700
        }
    }

    fn secret_dir(&self, secret: &str) -> Result<PathBuf, VolumeError> {
        check_object_name(secret).map_err(|source| VolumeError::Name {
            secret: secret.into(),
            source,
        })?;
        Ok(self.root.join(secret))
    }

    /// Writes `files` as the new content of `secret`: all of them appear at
    /// once, files no longer present disappear, the old generation is wiped.
    /// Every name is checked before anything is written.
    pub fn write_secret(
        &self,
        secret: &str,
        files: &[SecretFile],
    ) -> Result<WriteOutcome, VolumeError> {
        let dir = self.secret_dir(secret)?;
        for (index, file) in files.iter().enumerate() {
            check_file_name(&file.name).map_err(|source| VolumeError::Name {
                secret: secret.into(),
                source,
            })?;
            if files[..index].iter().any(|other| other.name == file.name) {
                return Err(VolumeError::Name {
                    secret: secret.into(),
                    source: NameError::Separator {
                        name: format!("{} (twice)", file.name),
                    },
                });
            }
        }
        self.ensure_secret_dir(&dir)?;
        if self.current_generation_holds(&dir, files)? {
            self.link_files(&dir, files)?;
            return Ok(WriteOutcome::Unchanged);
        }

        let generation_name = format!("..{}", unique_suffix());
        let generation = dir.join(&generation_name);
        DirBuilder::new()
            .mode(0o700)
            .create(&generation)
            .map_err(io_error("create", &generation))?;
        for file in files {
            self.write_file(&generation.join(&file.name), &file.content)?;
        }
        set_mode(&generation, self.generation_mode())?;
        self.set_group(&generation, None)?;
        sync_dir(&generation)?;

        let tmp = dir.join(DATA_LINK_TMP);
        remove_if_present(&tmp)?;
        std::os::unix::fs::symlink(&generation_name, &tmp).map_err(io_error("symlink", &tmp))?;
        let data = dir.join(DATA_LINK);
        fs::rename(&tmp, &data).map_err(io_error("swap", &data))?;

        self.link_files(&dir, files)?;
        self.unlink_stale_files(&dir, files)?;
        sync_dir(&dir)?;
        self.retire_generations(&dir, Some(&generation_name))?;
        sync_dir(&dir)?;
        Ok(WriteOutcome::Swapped)
    }

    /// Unlinks every file of `secret` and removes the secret's directory;
    /// its content is retired (zeroed after [`RETIRE_GRACE`]). Nothing to
    /// do if it is not there.
    pub fn wipe_secret(&self, secret: &str) -> Result<(), VolumeError> {
        let dir = self.secret_dir(secret)?;
        match fs::symlink_metadata(&dir) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("inspect", &dir)(error)),
            Ok(meta) if !meta.is_dir() => {
                fs::remove_file(&dir).map_err(io_error("remove", &dir))?;
                return sync_dir(&self.root);
            }
            Ok(_) => {}
        }
        for entry in read_dir(&dir)? {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if !is_dir {
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        sync_dir(&dir)?;
        self.retire_generations(&dir, None)?;
        fs::remove_dir(&dir).map_err(io_error("remove", &dir))?;
        sync_dir(&self.root)
    }

    /// When the next retired generation is due to be zeroed, if any.
    pub fn next_zero_at(&self) -> Option<Instant> {
        self.retired().iter().map(|(due, _)| *due).min()
    }

    /// Zeroes and removes the retired generations due by `now`; one that
    /// fails is tried again a grace period later. Generations a previous
    /// run left in the retired directory get a grace period from `now`.
    pub fn zero_retired(&self, now: Instant) -> Result<(), VolumeError> {
        let retired_dir = self.root.join(RETIRED_DIR);
        if let Ok(entries) = fs::read_dir(&retired_dir) {
            let mut retired = self.retired();
            for entry in entries.flatten() {
                let path = entry.path();
                if !retired.iter().any(|(_, known)| *known == path) {
                    retired.push((later(now, RETIRE_GRACE), path));
                }
            }
        }
        let due: Vec<PathBuf> = {
            let mut retired = self.retired();
            let due = retired
                .iter()
                .filter(|(at, _)| *at <= now)
                .map(|(_, path)| path.clone())
                .collect();
            retired.retain(|(at, _)| *at > now);
            due
        };
        let mut first_error = None;
        for path in due {
            if let Err(error) = wipe_dir_if_present(&path) {
                self.retired().push((later(now, RETIRE_GRACE), path));
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Zeroes every retired generation now and removes the retired
    /// directory: at exit, when no reader is left (a native sidecar stops
    /// after the pod's containers).
    pub fn zero_all_retired(&self) -> Result<(), VolumeError> {
        self.retired().clear();
        wipe_dir_if_present(&self.root.join(RETIRED_DIR))?;
        sync_dir(&self.root)
    }

    /// Creates the readiness marker (its content: `detail`, nothing secret).
    pub fn mark_ready(&self, detail: &str) -> Result<(), VolumeError> {
        let tmp = self.root.join(READY_MARKER_TMP);
        remove_if_present(&tmp)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(detail.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &tmp))?;
        let marker = self.root.join(READY_MARKER);
        fs::rename(&tmp, &marker).map_err(io_error("create", &marker))?;
        sync_dir(&self.root)
    }

    /// Removes the readiness marker if it is there.
    pub fn clear_ready(&self) -> Result<(), VolumeError> {
        remove_if_present(&self.root.join(READY_MARKER))?;
        sync_dir(&self.root)
    }

    /// Whether the readiness marker is there; the reason if not.
    pub fn check_ready(&self) -> Result<(), String> {
        let marker = self.root.join(READY_MARKER);
        match fs::symlink_metadata(&marker) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(format!("{} is not a file", marker.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(format!(
                "{} is absent: secrets not written yet, or one expired unrenewed",
                marker.display()
            )),
            Err(error) => Err(format!("cannot inspect {}: {error}", marker.display())),
        }
    }

    fn ensure_secret_dir(&self, dir: &Path) -> Result<(), VolumeError> {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(VolumeError::NotADirectory { path: dir.into() }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_error("create", dir))?;
                set_mode(dir, self.secret_dir_mode())?;
                self.set_group(dir, None)
            }
            Err(error) => Err(io_error("inspect", dir)(error)),
        }
    }

    fn write_file(&self, path: &Path, content: &[u8]) -> Result<(), VolumeError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error("create", path))?;
        file.write_all(content).map_err(io_error("write", path))?;
        file.set_permissions(Permissions::from_mode(self.file_mode()))
            .map_err(io_error("set the mode of", path))?;
        self.set_group(path, Some(&file))?;
        file.sync_all().map_err(io_error("fsync", path))
    }

    /// Gives `path` the fsGroup, if there is one. Without CAP_CHOWN this
    /// only works for a group the process is in; when it fails, the group
    /// may already be right (the volume's setgid bit), which is enough.
    fn set_group(&self, path: &Path, file: Option<&File>) -> Result<(), VolumeError> {
        let Some(gid) = self.fs_group else {
            return Ok(());
        };
        let result = match file {
            Some(file) => std::os::unix::fs::fchown(file, None, Some(gid)),
            None => std::os::unix::fs::lchown(path, None, Some(gid)),
        };
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                let actual = fs::symlink_metadata(path)
                    .map_err(io_error("inspect", path))?
                    .gid();
                if actual == gid {
                    Ok(())
                } else {
                    Err(VolumeError::Group {
                        path: path.into(),
                        gid,
                        actual,
                    })
                }
            }
            Err(error) => Err(io_error("change the group of", path)(error)),
        }
    }

    /// Whether `..data` already names a generation with exactly `files`.
    fn current_generation_holds(
        &self,
        dir: &Path,
        files: &[SecretFile],
    ) -> Result<bool, VolumeError> {
        let generation = dir.join(DATA_LINK);
        let names = match fs::read_dir(&generation) {
            Ok(entries) => entries
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_error("list", &generation))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(io_error("list", &generation)(error)),
        };
        if names.len() != files.len() {
            return Ok(false);
        }
        for file in files {
            let path = generation.join(&file.name);
            let mut current = Zeroizing::new(Vec::with_capacity(file.content.len()));
            match File::open(&path) {
                Ok(mut opened) => {
                    // One byte more than expected tells a longer file apart.
                    let limit = file.content.len() as u64 + 1;
                    (&mut opened)
                        .take(limit)
                        .read_to_end(&mut current)
                        .map_err(io_error("read", &path))?;
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(error) => return Err(io_error("read", &path)(error)),
            }
            if current.as_slice() != file.content.as_slice() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Points `<dir>/<file>` at `..data/<file>` for every file, replacing
    /// whatever is there by an atomic rename.
    fn link_files(&self, dir: &Path, files: &[SecretFile]) -> Result<(), VolumeError> {
        for file in files {
            let link = dir.join(&file.name);
            let target = Path::new(DATA_LINK).join(&file.name);
            if fs::read_link(&link).is_ok_and(|current| current == target) {
                continue;
            }
            let tmp = dir.join(FILE_LINK_TMP);
            remove_if_present(&tmp)?;
            std::os::unix::fs::symlink(&target, &tmp).map_err(io_error("symlink", &tmp))?;
            fs::rename(&tmp, &link).map_err(io_error("link", &link))?;
        }
        Ok(())
    }

    /// Removes the visible links of files the new generation no longer has.
    fn unlink_stale_files(&self, dir: &Path, files: &[SecretFile]) -> Result<(), VolumeError> {
        for entry in read_dir(dir)? {
            let name = entry.file_name();
            let visible = !name.as_encoded_bytes().starts_with(b".");
            let is_link = entry.file_type().is_ok_and(|kind| kind.is_symlink());
            if visible && is_link && !files.iter().any(|f| name == f.name.as_str()) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Retires every generation directory in `dir` except `keep`: the one
    /// just replaced, and any a previous run left behind. Renaming unlinks
    /// it from every path a reader resolves; open files keep their content
    /// until [`Self::zero_retired`] overwrites it.
    fn retire_generations(&self, dir: &Path, keep: Option<&str>) -> Result<(), VolumeError> {
        let mut retired_dir = None;
        for entry in read_dir(dir)? {
            let name = entry.file_name();
            let hidden = name.as_encoded_bytes().starts_with(b"..");
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if hidden && is_dir && keep.is_none_or(|keep| name != keep) {
                let into = match &retired_dir {
                    Some(into) => into,
                    None => retired_dir.insert(self.ensure_retired_dir()?),
                };
                let from = entry.path();
                let to = into.join(unique_suffix());
                // Moving a directory to another parent rewrites its `..`,
                // which needs its write bit; 0700 also keeps the fsGroup
                // out of it from now on (open files stay readable).
                set_mode(&from, 0o700)?;
                fs::rename(&from, &to).map_err(io_error("retire", &from))?;
                self.retired()
                    .push((later(Instant::now(), RETIRE_GRACE), to));
            }
        }
        if let Some(into) = retired_dir {
            sync_dir(&into)?;
        }
        Ok(())
    }

    fn ensure_retired_dir(&self) -> Result<PathBuf, VolumeError> {
        let dir = self.root.join(RETIRED_DIR);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => Err(VolumeError::NotADirectory { path: dir }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io_error("create", &dir))?;
                Ok(dir)
            }
            Err(error) => Err(io_error("inspect", &dir)(error)),
        }
    }
}

/// `at + delay`, or `at` if the clock cannot go that far.
fn later(at: Instant, delay: Duration) -> Instant {
    at.checked_add(delay).unwrap_or(at)
}

/// [`wipe_dir`], if `dir` is (still) there.
fn wipe_dir_if_present(dir: &Path) -> Result<(), VolumeError> {
    match fs::symlink_metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("inspect", dir)(error)),
        Ok(meta) if meta.is_dir() => wipe_dir(dir),
        Ok(_) => fs::remove_file(dir).map_err(io_error("remove", dir)),
    }
}

/// Overwrites every regular file in `dir` with zeros, unlinks everything in
/// it, and removes it.
fn wipe_dir(dir: &Path) -> Result<(), VolumeError> {
    set_mode(dir, 0o700)?;
    for entry in read_dir(dir)? {
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error("inspect", &path))?;
        if kind.is_dir() {
            wipe_dir(&path)?;
            continue;
        }
        if kind.is_file() {
            zero_file(&path)?;
        }
        fs::remove_file(&path).map_err(io_error("remove", &path))?;
    }
    sync_dir(dir)?;
    fs::remove_dir(dir).map_err(io_error("remove", dir))
}

/// Overwrites a regular file's bytes with zeros and fsyncs it; on tmpfs this
/// clears the very pages the secret was in.
fn zero_file(path: &Path) -> Result<(), VolumeError> {
    set_mode(path, 0o600)?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open", path))?;
    let mut remaining = file.metadata().map_err(io_error("inspect", path))?.len();
    let zeros = [0u8; 4096];
    while remaining > 0 {
        let chunk = remaining.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..chunk])
            .map_err(io_error("overwrite", path))?;
        remaining -= chunk as u64;
    }
    file.sync_all().map_err(io_error("fsync", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), VolumeError> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(io_error("set the mode of", path))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, VolumeError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        .map_err(io_error("list", dir))
}

fn remove_if_present(path: &Path) -> Result<(), VolumeError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error("remove", path)(error))
        }
        _ => Ok(()),
    }
}

/// Makes the entries of `dir` durable (renames, creations, unlinks).
fn sync_dir(dir: &Path) -> Result<(), VolumeError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("fsync", dir))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Seek;

    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Vec<SecretFile> {
        pairs
            .iter()
            .map(|(name, content)| SecretFile {
                name: (*name).into(),
                content: Zeroizing::new(content.as_bytes().to_vec()),
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    fn generations(dir: &Path) -> Vec<String> {
        entries(dir)
            .into_iter()
            .filter(|name| name.starts_with("..") && name != DATA_LINK)
            .collect()
    }

    #[test]
    fn a_secret_is_written_in_the_atomic_writer_layout_with_mode_0400() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let outcome = volume
            .write_secret(
                "orders-db",
                &files(&[("username", "app"), ("password", "s3cret")]),
            )
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Swapped);

        let dir = root.path().join("orders-db");
        assert_eq!(fs::read_to_string(dir.join("password")).unwrap(), "s3cret");
        assert_eq!(fs::read_to_string(dir.join("username")).unwrap(), "app");
        assert_eq!(
            fs::read_link(dir.join("password")).unwrap(),
            Path::new("..data/password")
        );
        let generation = fs::read_link(dir.join(DATA_LINK)).unwrap();
        let generation = generation.to_str().unwrap();
        assert!(generation.starts_with(".."), "{generation}");
        assert_eq!(generations(&dir), vec![generation.to_owned()]);
        assert_eq!(
            entries(&dir),
            BTreeSet::from([
                DATA_LINK.to_owned(),
                generation.to_owned(),
                "password".into(),
                "username".into()
            ])
        );
        assert_eq!(mode(&dir.join("password")), 0o400);
        assert_eq!(mode(&dir.join(generation)), 0o500);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn with_an_fs_group_files_are_group_readable_0440() {
        let root = tempfile::tempdir().unwrap();
        // A group the process may give its files: the one it already has.
        let gid = fs::metadata(root.path()).unwrap().gid();
        let volume = SecretVolume::new(root.path(), Some(gid));
        volume
            .write_secret("signing", &files(&[("token", "jwt")]))
            .unwrap();
        let file = root.path().join("signing/token");
        assert_eq!(mode(&file), 0o440);
        assert_eq!(fs::metadata(&file).unwrap().gid(), gid);
        assert_eq!(mode(&root.path().join("signing/..data")), 0o550);
        assert_eq!(mode(&root.path().join("signing")), 0o750);
    }

    #[test]
    fn a_renewal_swaps_all_files_at_once_and_wipes_the_old_generation() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let dir = root.path().join("orders-db");
        volume
            .write_secret(
                "orders-db",
                &files(&[("username", "v1"), ("password", "p1"), ("old", "x")]),
            )
            .unwrap();
        let first = fs::read_link(dir.join(DATA_LINK)).unwrap();
        // The old generation leaves the secret's directory at once.
        let old_generation = dir.join(&first);

        let outcome = volume
            .write_secret(
                "orders-db",
                &files(&[("username", "v2"), ("password", "p2"), ("new", "y")]),
            )
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Swapped);
        let second = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read_to_string(dir.join("username")).unwrap(), "v2");
        assert_eq!(fs::read_to_string(dir.join("password")).unwrap(), "p2");
        assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "y");
        assert!(
            fs::symlink_metadata(dir.join("old")).is_err(),
            "stale link left"
        );
        assert!(!old_generation.exists(), "old generation left");
        assert_eq!(generations(&dir), vec![second.to_str().unwrap().to_owned()]);
    }

    #[test]
    fn the_same_files_again_leave_the_generation_in_place() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let secret = files(&[("password", "same")]);
        volume.write_secret("db", &secret).unwrap();
        let first = fs::read_link(root.path().join("db/..data")).unwrap();
        assert_eq!(
            volume.write_secret("db", &secret).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(fs::read_link(root.path().join("db/..data")).unwrap(), first);
        assert_eq!(
            volume
                .write_secret("db", &files(&[("password", "samE")]))
                .unwrap(),
            WriteOutcome::Swapped
        );
    }

    #[test]
    fn names_that_escape_are_refused_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        for name in ["../escape", "..data", ".hidden", "a/b", ""] {
            let error = volume
                .write_secret("db", &files(&[("ok", "1"), (name, "2")]))
                .unwrap_err();
            assert!(matches!(error, VolumeError::Name { .. }), "{name}: {error}");
        }
        let error = volume
            .write_secret("db", &files(&[("twice", "1"), ("twice", "2")]))
            .unwrap_err();
        assert!(error.to_string().contains("twice"), "{error}");
        for secret in ["..", "../x", "A"] {
            assert!(volume.write_secret(secret, &files(&[("ok", "1")])).is_err());
        }
        assert!(entries(root.path()).is_empty());
    }

    #[test]
    fn a_symlink_in_place_of_the_secret_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("db")).unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let error = volume
            .write_secret("db", &files(&[("ok", "1")]))
            .unwrap_err();
        assert!(
            matches!(error, VolumeError::NotADirectory { .. }),
            "{error}"
        );
        assert!(entries(elsewhere.path()).is_empty());
    }

    #[test]
    fn wiping_zeroes_and_removes_everything_leaving_an_empty_volume() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        volume
            .write_secret("db", &files(&[("password", "p"), ("username", "u")]))
            .unwrap();
        volume
            .write_secret("jwt", &files(&[("token", "t")]))
            .unwrap();
        volume.mark_ready("{}").unwrap();
        // Keep the old content reachable to see it was overwritten.
        let mut held = File::open(root.path().join("db/password")).unwrap();

        volume.wipe_secret("db").unwrap();
        volume.wipe_secret("jwt").unwrap();
        volume.clear_ready().unwrap();
        volume.wipe_secret("never-written").unwrap();
        assert_eq!(
            entries(root.path()),
            BTreeSet::from([RETIRED_DIR.to_owned()]),
            "only the retired generations, out of every reader's path"
        );
        volume.zero_all_retired().unwrap();

        let mut content = Vec::new();
        held.read_to_end(&mut content).unwrap();
        assert_eq!(content, vec![0u8]);
        assert!(
            entries(root.path()).is_empty(),
            "{:?}",
            entries(root.path())
        );
        assert_eq!(volume.next_zero_at(), None);
    }

    #[test]
    fn a_reader_of_a_replaced_or_wiped_file_keeps_its_old_content_until_the_grace_ends() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let old = "p1".repeat(5000);
        volume
            .write_secret("db", &files(&[("password", &old)]))
            .unwrap();
        // A reader opens the file and reads half of it...
        let mut replaced = File::open(root.path().join("db/password")).unwrap();
        let mut first_half = vec![0u8; old.len() / 2];
        replaced.read_exact(&mut first_half).unwrap();
        // ... the secret is renewed with new content meanwhile ...
        let before = Instant::now();
        volume
            .write_secret("db", &files(&[("password", "p2")]))
            .unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("db/password")).unwrap(),
            "p2"
        );
        let mut wiped = File::open(root.path().join("db/password")).unwrap();
        volume.wipe_secret("db").unwrap();
        assert!(fs::symlink_metadata(root.path().join("db")).is_err());
        // ... and the zeroing is not due yet: both readers read all of
        // the content they opened.
        let zero_at = volume.next_zero_at().unwrap();
        assert!(zero_at >= before + RETIRE_GRACE);
        volume.zero_retired(Instant::now()).unwrap();
        let mut rest = Vec::new();
        replaced.read_to_end(&mut rest).unwrap();
        first_half.extend_from_slice(&rest);
        assert_eq!(first_half, old.as_bytes(), "the whole old content");
        let mut content = String::new();
        wiped.read_to_string(&mut content).unwrap();
        assert_eq!(content, "p2");

        // After the grace period, the content is zeroed and gone.
        volume.zero_retired(zero_at + RETIRE_GRACE).unwrap();
        assert_eq!(volume.next_zero_at(), None);
        let mut zeroed = Vec::new();
        File::open(root.path().join(RETIRED_DIR))
            .unwrap()
            .sync_all()
            .unwrap();
        replaced.rewind().unwrap();
        replaced.read_to_end(&mut zeroed).unwrap();
        assert!(zeroed.iter().all(|b| *b == 0) && zeroed.len() == old.len());
        assert!(entries(&root.path().join(RETIRED_DIR)).is_empty());
    }

    #[test]
    fn generations_a_previous_run_retired_get_a_grace_period_then_are_zeroed() {
        let root = tempfile::tempdir().unwrap();
        let stray = root.path().join(RETIRED_DIR).join("0000000000000000");
        fs::create_dir_all(&stray).unwrap();
        fs::write(stray.join("password"), "old").unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let now = Instant::now();
        volume.zero_retired(now).unwrap();
        assert_eq!(fs::read_to_string(stray.join("password")).unwrap(), "old");
        assert_eq!(volume.next_zero_at(), Some(now + RETIRE_GRACE));
        volume.zero_retired(now + RETIRE_GRACE).unwrap();
        assert!(!stray.exists());
    }

    #[test]
    fn generations_left_by_a_previous_run_are_wiped_on_the_next_write() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        volume
            .write_secret("db", &files(&[("password", "a")]))
            .unwrap();
        let stray = root.path().join("db/..0000000000000000");
        fs::create_dir(&stray).unwrap();
        fs::write(stray.join("password"), "old").unwrap();
        volume
            .write_secret("db", &files(&[("password", "b")]))
            .unwrap();
        assert!(!stray.exists());
        assert_eq!(generations(&root.path().join("db")).len(), 1);
    }

    #[test]
    fn the_ready_marker_comes_and_goes() {
        let root = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(root.path(), None);
        let reason = volume.check_ready().unwrap_err();
        assert!(reason.contains("is absent"), "{reason}");
        volume.mark_ready("{\"secrets\":1}").unwrap();
        volume.check_ready().unwrap();
        volume.mark_ready("{\"secrets\":1}").unwrap();
        volume.clear_ready().unwrap();
        volume.clear_ready().unwrap();
        assert!(volume.check_ready().is_err());
        assert!(entries(root.path()).is_empty());
    }
}
