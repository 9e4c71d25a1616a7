"""`from mllm import ...` works as transformers users expect, and stays lazy."""

import subprocess
import sys


def test_public_names_import_and_are_the_real_objects():
    import mllm
    from mllm import EmoReasonForConditionalGeneration, EmoReasonProcessor, parse
    from mllm.model.modeling import EmoReasonForConditionalGeneration as Model
    from mllm.output import parse as real_parse
    from mllm.processor import EmoReasonProcessor as Processor

    assert EmoReasonForConditionalGeneration is Model
    assert EmoReasonProcessor is Processor
    assert parse is real_parse
    for name in mllm.__all__:
        assert getattr(mllm, name) is not None
    try:
        mllm.not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_import_is_lazy():
    code = "import sys, mllm; print(int(any(m in sys.modules for m in ('torch', 'transformers', 'av'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0"
