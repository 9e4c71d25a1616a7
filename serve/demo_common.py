"""What both tabs of the demo use (`serve.demo`'s file tab, `serve.live_demo`'s Live tab): the questions it offers,
how a parsed answer reads, and which files a request may name (only plain files uploaded to this server)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mllm.output import TASKS

TASK_CHOICES = [
    ("Expression", "expr"),
    ("Action units", "au"),
    ("Valence / arousal", "va"),
    ("Ambivalence / hesitancy", "ah"),
]
assert [t for _, t in TASK_CHOICES] == list(TASKS)
TASK_NAMES = {task: name for name, task in TASK_CHOICES}


def answer_markdown(parsed: dict) -> str:
    """The parsed result as the demo shows it."""
    if not parsed["ok"]:
        return f"No parsable answer ({parsed['error']}: {parsed['message']})"
    task = parsed["task"]
    if task == "expr":
        text = f"Expression: **{parsed['label']}**"
    elif task == "au":
        text = "Action units: **" + (", ".join(parsed["aus"]) or "none active") + "**"
    elif task == "va":
        text = f"Valence **{parsed['valence']:+.2f}**, arousal **{parsed['arousal']:+.2f}**"
    else:
        text = f"Ambivalence/hesitancy: **{parsed['ambivalence_hesitancy']}**"
    if parsed.get("cited_aus"):
        text += "  \nAUs cited in the reasoning: " + ", ".join(parsed["cited_aus"])
    return text


def upload_folder() -> Path:
    """The folder Gradio writes uploads to (and the only one the demo reads from)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def uploaded_file(path: str, folder: Path) -> str | None:
    """Why `path` is not a file uploaded to this server (None when it is one): inside `folder`, a plain file, not a
    link. The reason never says whether a file elsewhere exists."""
    if not isinstance(path, str) or not path:
        return "names no file"
    candidate = Path(path)
    if not Path(os.path.abspath(candidate)).is_relative_to(folder) or not candidate.resolve().is_relative_to(folder):
        return "names a file that was not uploaded to this server"
    try:
        mode = os.lstat(candidate).st_mode
    except OSError:
        return "names an upload that is gone (upload the file again)"
    if not stat.S_ISREG(mode):
        return "names something in the upload folder that is not a plain file"
    return None
