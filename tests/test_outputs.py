"""A step's outputs appear all at once or not at all, also when the step is killed (SIGKILL) while publishing them."""

import signal
import subprocess
import sys
import textwrap

import pytest

from tissuemap.outputs import complete_interrupted_publications, staged_outputs

NAMES = ("a.csv", "b.csv", "sub/c.csv")


def write_outputs(folder, version):
    for name in NAMES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{version} {name}\n")


def versions(folder):
    """Each output file's version, and the other entries of the folder (left-overs of a publication)."""
    found = {name: (folder / name).read_text().split()[0] for name in NAMES}
    extra = sorted(path.name for path in folder.iterdir() if path.name not in {"a.csv", "b.csv", "sub"})
    return found, extra


def publish_and_get_killed(folder, kill_after_moves):
    """In a subprocess, publish version "new" of the outputs into ``folder`` and SIGKILL the process after
    ``kill_after_moves`` files were moved into place (0: just before the publication's commit)."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import tissuemap.outputs as outputs

        moves, replace, rename = 0, os.replace, os.rename
        def killed_after(limit):
            def move(source, target):
                global moves
                if moves == limit:
                    os.kill(os.getpid(), signal.SIGKILL)
                replace(source, target)
                moves += 1
            return move

        def killed_at_commit(source, target):
            os.kill(os.getpid(), signal.SIGKILL)

        if {kill_after_moves}:
            outputs.os.replace = killed_after({kill_after_moves})
        else:
            outputs.os.rename = killed_at_commit
        folder = Path({str(folder)!r})
        with outputs.staged_outputs(folder) as staging:
            for name in {NAMES!r}:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_text(f"new {{name}}\\n")
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr


@pytest.mark.parametrize("kill_after_moves, expected", [(0, "old"), (1, "new"), (2, "new")])
def test_a_kill_during_publication_leaves_the_old_or_the_new_outputs_never_a_mix(tmp_path, kill_after_moves,
                                                                                 expected):
    folder = tmp_path / "out"
    folder.mkdir()
    write_outputs(folder, "old")
    publish_and_get_killed(folder, kill_after_moves)
    # the next command writing to the folder first makes good what the killed one left
    with staged_outputs(folder) as staging:
        (staging / "other.txt").write_text("another step's output\n")
    assert versions(folder) == (dict.fromkeys(NAMES, expected), ["other.txt"])


def test_a_live_steps_staging_folder_is_left_alone(tmp_path):
    with staged_outputs(tmp_path) as staging:
        (staging / "a.csv").write_text("new\n")
        complete_interrupted_publications(tmp_path)  # what a second command writing here does first
        assert (staging / "a.csv").is_file()
    assert (tmp_path / "a.csv").read_text() == "new\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.csv"]


def test_a_signal_during_publication_waits_until_every_file_is_in_place(tmp_path):
    """SIGTERM while the files are moved: held until the publication is done, then it ends the process."""
    folder = tmp_path / "out"
    folder.mkdir()
    write_outputs(folder, "old")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import tissuemap.outputs as outputs

        replace = os.replace
        def terminated(source, target):
            os.kill(os.getpid(), signal.SIGTERM)
            replace(source, target)

        outputs.os.replace = terminated
        with outputs.staged_outputs(Path({str(folder)!r})) as staging:
            for name in {NAMES!r}:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_text(f"new {{name}}\\n")
        print("after the publication")
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGTERM
    assert "after the publication" not in process.stdout
    assert versions(folder) == (dict.fromkeys(NAMES, "new"), [])
