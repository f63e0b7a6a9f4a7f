//! Guards the docs: every relative link in README.md and docs/*.md names a file in the repository.
//!
//! Run by `cargo test -p xtask` (part of `cargo xtask test`). A link is `[text](target)` or
//! `![alt](target)`, outside code blocks and code spans; `http(s)://` targets and pure `#anchor`
//! targets are not checked, and a `#fragment` is stripped before the file is looked up. Neither
//! those pages nor the workspace's Cargo.toml and .cargo/config.toml may name a file outside the
//! repository (the workspace's sibling folder of shared notes, or its toolchain notes file):
//! docs/toolchain.md holds what the build needs.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The repository's root: xtask's parent directory.
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf()
    }

    /// README.md and every docs/*.md, sorted.
    fn pages(root: &Path) -> Vec<PathBuf> {
        let mut pages = vec![root.join("README.md")];
        let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
            .expect("reading docs/")
            .map(|e| e.expect("reading docs/").path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        pages.extend(docs);
        pages
    }

    /// `line` with its code spans (`` `...` ``, ``` ``...`` ```) blanked out.
    fn without_code_spans(line: &str) -> String {
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        while let Some(start) = rest.find('`') {
            out.push_str(&rest[..start]);
            let ticks = rest[start..].len() - rest[start..].trim_start_matches('`').len();
            let fence = &rest[start..start + ticks];
            let after = &rest[start + ticks..];
            match after.find(fence) {
                Some(end) => rest = &after[end + ticks..],
                // An unmatched backtick is literal text.
                None => {
                    out.push_str(fence);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// (line number, target) of every inline link and image outside code.
    fn links(text: &str) -> Vec<(usize, String)> {
        let mut found = Vec::new();
        let mut fenced = false;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            let line = without_code_spans(line);
            let mut rest = line.as_str();
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let target = match rest.strip_prefix('<') {
                    // `(<path with spaces>)`
                    Some(inner) => &inner[..inner.find('>').unwrap_or(inner.len())],
                    // `(path)` or `(path "title")`
                    None => {
                        let end = rest.find(')').unwrap_or(rest.len());
                        rest[..end].split_whitespace().next().unwrap_or("")
                    }
                };
                found.push((i + 1, target.to_owned()));
            }
        }
        found
    }

    /// The file a relative link names, or `None` for what is not checked (web, anchors).
    fn local_target(target: &str) -> Option<&str> {
        if target.is_empty() || target.starts_with('#') || target.contains("://") {
            return None;
        }
        if target.starts_with("mailto:") {
            return None;
        }
        Some(target.split('#').next().unwrap_or(target))
    }

    #[test]
    fn every_relative_link_names_a_file_in_the_repository() {
        let root = root();
        let canonical_root = root.canonicalize().expect("canonical repository root");
        let mut broken = Vec::new();
        for page in pages(&root) {
            let text = std::fs::read_to_string(&page).expect("reading a page");
            let dir = page.parent().expect("a page has a directory");
            let shown = page
                .strip_prefix(&root)
                .unwrap_or(&page)
                .display()
                .to_string();
            for (line, target) in links(&text) {
                let Some(path) = local_target(&target) else {
                    continue;
                };
                let resolved = match path.strip_prefix('/') {
                    Some(from_root) => root.join(from_root),
                    None => dir.join(path),
                };
                let inside = resolved
                    .canonicalize()
                    .is_ok_and(|p| p.starts_with(&canonical_root));
                if !inside {
                    broken.push(format!("{shown}:{line}: {target}"));
                }
            }
        }
        assert!(
            broken.is_empty(),
            "links to files that are not in the repository:\n{}",
            broken.join("\n")
        );
    }

    #[test]
    fn nothing_points_outside_the_repository() {
        let root = root();
        let mut files = pages(&root);
        files.extend([root.join("Cargo.toml"), root.join(".cargo/config.toml")]);
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("reading a file");
            let shown = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .display()
                .to_string();
            for (i, line) in text.lines().enumerate() {
                // Spelt in pieces so this guard does not itself name a path outside the repository.
                for outside in [concat!("..", "/", "shared"), concat!("TOOLCHAIN", ".md")] {
                    if line.contains(outside) {
                        found.push(format!("{shown}:{}: {outside}", i + 1));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "references to files outside the repository (docs/toolchain.md holds the toolchain):\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn links_are_found_outside_code_only() {
        let text = "see [a](a.md#x) and ![pic](img/p.svg \"title\"), [web](https://e.org)\n\
                    `[not](code.md)` but [b](<b c.md>)\n\
                    ```\n[fenced](no.md)\n```\n\
                    [split\ntext](d/) and ``x ` [y](z.md)`` [anchor](#here)\n";
        let got: Vec<(usize, String)> = links(text);
        let want: Vec<(usize, String)> = [
            (1, "a.md#x"),
            (1, "img/p.svg"),
            (1, "https://e.org"),
            (2, "b c.md"),
            (7, "d/"),
            (7, "#here"),
        ]
        .into_iter()
        .map(|(l, t)| (l, t.to_owned()))
        .collect();
        assert_eq!(got, want);
        let checked: Vec<&str> = got.iter().filter_map(|(_, t)| local_target(t)).collect();
        assert_eq!(checked, ["a.md", "img/p.svg", "b c.md", "d/"]);
    }
}
