#!/usr/bin/env python3
"""House figures: tracked .rs files over 600 lines of non-test code (code before the first
`#[cfg(test)]`; tests/, benches/, tests.rs and modules declared `#[cfg(test)] mod x;` left
out) and functions over 80 lines.
Usage: scripts/code-sizes.py [REPO_DIR]"""
import re, subprocess, sys
root = sys.argv[1] if len(sys.argv) > 1 else "."
files = subprocess.run(["git", "-C", root, "ls-files", "*.rs"], capture_output=True, text=True).stdout.split()
big_files, long_fns = [], []

def test_only_modules():
    """Files of modules declared `#[cfg(test)] mod name;` (test code kept in its own file)."""
    found = set()
    for f in files:
        lines = open(f"{root}/{f}").read().split("\n")
        base = f.rsplit("/", 1)[0] if "/" in f else ""
        if not f.endswith(("/mod.rs", "/lib.rs", "/main.rs")) and f not in ("lib.rs", "main.rs"):
            base = f[:-3]
        for i, l in enumerate(lines):
            m = re.match(r"^\s*(pub(\([^)]*\))?\s+)?mod\s+(\w+)\s*;", l)
            if not m:
                continue
            attrs = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#["):
                attrs.append(lines[j].strip()); j -= 1
            if "#[cfg(test)]" in attrs:
                found.update({f"{base}/{m.group(3)}.rs", f"{base}/{m.group(3)}/mod.rs"})
    return found

test_files = test_only_modules()
for f in files:
    if f.startswith("tests/") or "/tests/" in f or f.endswith("tests.rs") or f.startswith("benches/"):
        continue
    if f in test_files:
        continue
    lines = open(f"{root}/{f}").read().split("\n")
    end = len(lines)
    for i, l in enumerate(lines):
        if l.strip() == "#[cfg(test)]":
            end = i; break
    code = lines[:end]
    if len(code) > 600: big_files.append((len(code), f))
    fn_re = re.compile(r'^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)')
    for i, l in enumerate(code):
        m = fn_re.match(l)
        if not m: continue
        indent = m.group(1)
        for j in range(i, len(code)):
            if code[j].rstrip() == indent + "}":
                break
            # A declaration without a body (a trait method), on one line or several.
            if "{" not in "".join(code[i:j + 1]) and code[j].rstrip().endswith(";"):
                break
        n = j - i + 1
        if n > 80: long_fns.append((n, f, m.group(7)))
print(f"files over 600 non-test lines: {len(big_files)}")
for n, f in sorted(big_files, reverse=True): print(f"  {n:5} {f}")
print(f"functions over 80 lines: {len(long_fns)}")
for n, f, name in sorted(long_fns, reverse=True): print(f"  {n:5} {f} {name}")
