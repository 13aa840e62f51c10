//! Embeds every file under `assets/` into the binary: a table of paths, bytes, entity
//! tags and gzip-compressed copies (where compression saves something), generated here
//! so that a file added to the console is served without a list to keep in step by hand.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::{env, fs};

use flate2::Compression;
use flate2::write::GzEncoder;

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
    let out = PathBuf::from(env::var("OUT_DIR")?);
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
        let tag = format!("{:016x}-{:x}", hasher.finish(), bytes.len());
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&bytes)?;
        let gz = gz.finish()?;
        // Only where it saves at least a tenth: small files are not worth a variant.
        let gzip = if gz.len() * 10 < bytes.len() * 9 {
            let path = out.join(format!("{}.gz", name.replace('/', "__")));
            fs::write(&path, &gz)?;
            format!("Some(include_bytes!({:?}))", path.display().to_string())
        } else {
            "None".to_owned()
        };
        table.push_str(&format!(
            "    Asset {{ path: {name:?}, bytes: include_bytes!({:?}), gzip: {gzip}, \
             etag: \"\\\"{tag}\\\"\", etag_gzip: \"\\\"{tag}-gz\\\"\" }},\n",
            file.display().to_string(),
        ));
    }
    table.push_str("];\n");
    fs::write(out.join("assets.rs"), table)?;
    Ok(())
}
