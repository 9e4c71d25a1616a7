"""Sample completions while training: a table on the console and in TensorBoard every `sample_every` steps and at
the end, so a run that learns the wrong thing (or nothing) shows it before the last step."""

from __future__ import annotations

import torch
from transformers import TrainerCallback


class SampleCompletions(TrainerCallback):
    """Greedy completions for a few fixed rows, parsed, beside the target; logged as a table."""

    def __init__(self, trainer, processor, rows, every: int, max_new_tokens: int = 160):
        self.trainer, self.processor, self.rows = trainer, processor, rows
        self.every, self.max_new_tokens = every, max_new_tokens

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.show(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.show(state.global_step)

    @torch.no_grad()
    def show(self, step: int) -> list[dict]:
        from rich.console import Console
        from rich.table import Table

        from data_builders.read import conversation
        from mllm.output import parse

        if not self.trainer.is_world_process_zero() or not len(self.rows):
            return []
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        shown = []
        try:
            for row in self.rows:
                batch = self.processor([conversation(row, with_target=False)])
                batch = {k: v.to(model.device) for k, v in batch.items()}
                tokens = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)[0]
                text = self.processor.decode(tokens)
                result = parse(text, row["task"], row["label_space"])
                shown.append({"id": row["id"], "completion": text, "answer": result.answer if result.ok else None})
        finally:
            model.train(was_training)
        table = Table(title=f"sample completions, step {step}", show_lines=True)
        for column in ("sample", "completion", "parsed answer"):
            table.add_column(column, overflow="fold")
        for s in shown:
            table.add_row(s["id"], s["completion"], "(unparseable)" if s["answer"] is None else str(s["answer"]))
        Console(stderr=True).print(table)
        writer = _tensorboard_writer(self.trainer)
        if writer is not None:
            text = "\n\n".join(f"**{s['id']}** → `{s['answer']}`\n\n    {s['completion']}" for s in shown)
            writer.add_text("samples/completions", text, step)
            writer.flush()
        return shown


def _tensorboard_writer(trainer):
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            return callback.tb_writer
    return None
