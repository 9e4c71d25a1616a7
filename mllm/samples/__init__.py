"""Sample and fixture makers, for tests, benchmarks, `emoreason make-tiny` and the README's offline examples.

    from mllm.samples import synthetic                   # real-format media made offline (faces, speech)
    from mllm.samples.tiny import make_tiny              # tiny random checkpoints in the real ones' formats
    from mllm.samples.expression_photos import write_rafdb_expression_tree  # a small RAF-DB of warped faces

They build on the core (`mllm.media`, `mllm.model`, `mllm.processor`, ...) and on `data_builders` (the layouts
they write); the core never imports them (tests/test_layout.py checks).
"""
