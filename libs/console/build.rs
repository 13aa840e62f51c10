//! Embeds every file under `assets/` into the binary: a table of paths, bytes and
//! entity tags, generated here so that a file added to the console is served without
//! a list to keep in step by hand.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::{env, fs};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("assets");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files)?;
    files.sort();
    let mut table = String::from("pub(crate) static ASSETS: &[Asset] = &[\n");
    for file in &files {
        let name = file
            .strip_prefix(&root)?
            .to_str()
            .ok_or("an asset's path is not UTF-8")?
            .replace('\\', "/");
        if name.split('/').any(|part| part.starts_with('.')) {
            continue;
        }
        let bytes = fs::read(file)?;
        // `DefaultHasher::new()` has fixed keys: the same bytes give the same tag in
        // every process of this build, so every admin node of a version agrees.
        let mut hasher = std::hash::DefaultHasher::new();
        bytes.hash(&mut hasher);
        table.push_str(&format!(
            "    Asset {{ path: {name:?}, bytes: include_bytes!({:?}), etag: \"\\\"{:016x}-{:x}\\\"\" }},\n",
            file.display().to_string(),
            hasher.finish(),
            bytes.len()
        ));
    }
    table.push_str("];\n");
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("assets.rs"), table)?;
    Ok(())
}
