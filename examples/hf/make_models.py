"""Build two small Hugging Face models from configs and save them as a user's ``save_pretrained`` folders would be:
a BERT-style sentence classifier and a GPT-2-style causal LM, both over bytes (vocabulary 256; id 0 = padding).

    python examples/hf/make_models.py [FOLDER]        # default: examples/hf/models

Each is first trained briefly on the English text of :mod:`data` (so it is a teacher worth compressing, not random
weights). With your own models, skip this: point ``task_options.folder`` at your ``save_pretrained`` folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
import data  # noqa: E402


def _fit(model: torch.nn.Module, batches, loss_of, steps: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss_of(model, batches[step % len(batches)]).backward()
        opt.step()
    model.eval()


def build(folder: Path, steps: int = 150) -> None:
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=256, n_positions=data.LENGTH, n_embd=64, n_layer=2, n_head=4, pad_token_id=0,
        bos_token_id=1, eos_token_id=2))
    seqs = torch.stack(data.lm_splits()[0])
    batches = list(seqs.split(32))
    _fit(lm, batches, lambda m, b: m(input_ids=b, attention_mask=(b != 0).long(), labels=b).loss, steps)
    lm.save_pretrained(folder / "gpt2-bytes")

    clf = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=data.LENGTH, num_labels=2, pad_token_id=0))
    train = data.classifier_splits()[0]
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    pairs = list(zip(x.split(32), y.split(32), strict=True))
    _fit(clf, pairs, lambda m, b: m(input_ids=b[0], attention_mask=(b[0] != 0).long(), labels=b[1]).loss, steps)
    clf.save_pretrained(folder / "bert-bytes")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "models")
