"""pa_jax.outputs: the output-folder policy as a library (what a GUI calls too)."""

from __future__ import annotations

import os

import pytest

from pa_jax import outputs
from pa_jax.errors import InputError


def _tree(folder) -> dict[str, str]:
  return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _siblings(out) -> list[str]:
  return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_check_output_refuses_inputs_files_and_earlier_results(tmp_path):
  inp = tmp_path / "in"
  inp.mkdir()
  (inp / "a.png").write_text("raw")
  with pytest.raises(InputError, match="is also the input"):
    outputs.check_output(inp, [inp], overwrite=True)
  with pytest.raises(InputError, match="contains the input"):
    outputs.check_output(tmp_path, [inp], overwrite=True)
  with pytest.raises(InputError, match="lies inside the input folder"):
    outputs.check_output(inp / "out", [inp], overwrite=True)
  # ... unless that input's reader never reads sub-folders; a single input file only
  # forbids the output being that file.
  assert outputs.check_output(inp / "out", [inp], nest_ok=[inp]) == (inp / "out").resolve()
  assert outputs.check_output(tmp_path / "o", [inp / "a.png"])
  with pytest.raises(InputError, match="existing file"):
    outputs.check_output(inp / "a.png", [])
  with pytest.raises(InputError, match="a.png is a file"):
    outputs.check_output(inp / "a.png" / "x" / "y", [])
  # A relative path or a link to the input is still the input.
  os.symlink(inp, tmp_path / "link")
  with pytest.raises(InputError, match="is also the input"):
    outputs.check_output(tmp_path / "link", [inp])
  full = tmp_path / "full"
  (full / "sub").mkdir(parents=True)
  (full / "sub" / "x.csv").write_text("1")
  (full / "y.csv").write_text("2")
  with pytest.raises(InputError, match=r"holds 2 files .*`overwrite`"):
    outputs.check_output(full, [inp])
  assert outputs.check_output(full, [inp], overwrite=True)
  assert outputs.check_output(full, [inp], is_own=True)
  (tmp_path / "empty").mkdir()
  assert outputs.check_output(tmp_path / "empty", [inp])
  assert outputs.check_output(tmp_path / "x", [None])


def test_staged_output_appears_only_on_success(tmp_path):
  out = tmp_path / "out"
  with outputs.staged_output(out) as tmp:
    assert tmp.parent == out.parent and tmp.name.startswith(".out.tmp-")
    (tmp / "a.txt").write_text("new")
    assert not out.exists()
  assert _tree(out) == {"a.txt": "new"} and _siblings(out) == []
  (tmp_path / "empty").mkdir()
  with outputs.staged_output(tmp_path / "empty") as tmp:
    (tmp / "b.txt").write_text("b")
  assert _tree(tmp_path / "empty") == {"b.txt": "b"}


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyboardInterrupt()])
def test_staged_output_failure_keeps_the_old_output(tmp_path, exc):
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.txt").write_text("old")
  with pytest.raises(type(exc)):
    with outputs.staged_output(out, overwrite=True) as tmp:
      (tmp / "half.txt").write_text("half")
      raise exc
  assert _tree(out) == {"old.txt": "old"} and _siblings(out) == []


def test_staged_output_overwrite_swaps_as_a_whole(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.txt").write_text("old")
  with outputs.staged_output(out, overwrite=True) as tmp:
    (tmp / "new.txt").write_text("new")
  assert _tree(out) == {"new.txt": "new"} and _siblings(out) == []


def test_staged_output_names_the_final_path_in_errors(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(InputError) as err:
    with outputs.staged_output(out) as tmp:
      raise InputError(tmp / "a.png", "write failed (No space left on device)")
  assert err.value.where == str(out.resolve() / "a.png")
  with pytest.raises(InputError, match="cannot write here") as err:
    with outputs.staged_output(out) as tmp:
      raise OSError(28, "No space left on device", str(tmp / "b.png"))
  assert not out.exists() and _siblings(out) == []


def test_recover_after_a_killed_command(tmp_path):
  out = tmp_path / "out"
  dead = 2 ** 22 + 12345  # above the usual pid_max: no such process
  (tmp_path / f".out.tmp-{dead}").mkdir()  # killed while writing: dropped
  (tmp_path / f".out.old-{dead}").mkdir()  # killed between the two renames: restored
  (tmp_path / f".out.old-{dead}" / "old.txt").write_text("old")
  outputs.recover(out)
  assert _tree(out) == {"old.txt": "old"} and _siblings(out) == []
  alive = tmp_path / f".out.tmp-{os.getpid()}"
  alive.mkdir()  # a live process's folder is left alone
  outputs.recover(out)
  assert alive.is_dir()


def test_replaced_in_place_restores_the_old_folder_on_failure(tmp_path):
  out = tmp_path / "project"
  out.mkdir()
  (out / "notes.txt").write_text("old")
  with pytest.raises(RuntimeError):
    with outputs.replaced_in_place(out):
      (out / "state.json").write_text("{}")
      raise RuntimeError("training failed")
  assert _tree(out) == {"notes.txt": "old"} and _siblings(out) == []
  with outputs.replaced_in_place(out):
    (out / "state.json").write_text("{}")
  assert _tree(out) == {"state.json": "{}"} and _siblings(out) == []


def test_on_error_values(tmp_path):
  assert outputs.check_on_error("skip") == "skip"
  with pytest.raises(InputError, match="on_error"):
    outputs.check_on_error("ignore")
  assert outputs.write_skipped(tmp_path, []) is None
  path = outputs.write_skipped(tmp_path, [("a.png", "truncated")])
  assert path.read_text() == "file,reason\na.png,truncated\n"
