"""Downstream tasks: fine-tune any lmlab model on classify, pair, choice (and tag, qa) data.

The contract (tests, the CLI and other task files rely on these names):

`base.TaskSpec` (frozen dataclass, saved in config.json as "task"): name (classify | pair | tag |
qa | choice), labels (tuple of class names; empty for regression, qa, choice), regression, lm_coef
(λ of GPT's auxiliary LM loss, decoders only), pair_mode (concat | similarity), max_len (input
tokens, task tokens included, at most the model's position table), arch (encoder | decoder),
start_id / delim_id / extract_id (GPT's task tokens), pad_id, dropout (on the head input), extra
(a dict of task-specific plain values).

`base.TaskModel(backbone, head, spec)`: `.backbone` is any lmlab model, `.head` an nn.Module from
the task file, `.spec` the TaskSpec. `forward(**batch)` takes input_ids (B, T) or (B, N, T) (N
sequences per example: choice options, both orders of a similarity pair; they run as B·N backbone
rows) with attention_mask and, for encoders only, token_type_ids of the same shape; every other
batch entry (labels, extract_index, choice_mask, ...) reaches the head untouched. The head is
called as `head(backbone_output, batch) -> ModelOutput` and sets .logits (or .start_logits /
.end_logits for qa); TaskModel adds .lm_logits (the backbone's LM logits) and .hidden.

Inputs. Decoders (GPT, GPT-2, any causal family with `wte`/`lm_head`; Radford et al. 2018 §3.3):
`base.add_task_tokens(backbone, tokenizer)` adds `<start>`, `<delim>`, `<extract>` to the
tokenizer and grows the tied embedding (new rows N(0, 0.02)); classify is `<start> text <extract>`,
pair `<start> a <delim> b <extract>`, similarity both orders with their extract states added,
choice one `<start> context <delim> option <extract>` per option. Batches are right-padded and
carry extract_index (the last real token), which `base.sequence_state` reads. Encoders (BERT):
`[CLS] a [SEP] (b [SEP])` from `WordPieceTokenizer.encode_pair`, read at the pooled [CLS] state.
Loss: `task loss + lm_coef · base.lm_aux_loss` (L_LM over the real tokens of the task input;
decoders only).

Registry (`registry.py`, literal dicts): `HEADS[name] = build_head(backbone, spec) -> nn.Module`
(used by `lmlab.load` to rebuild a saved TaskModel) and `TASKS[name] = module`. A task module has:
    read(source, split, options) -> examples        # DataError naming file:line on bad input
    label_set(train_examples, options) -> (labels, regression)
    featurize(examples, tokenizer, spec, truncate) -> features  # too long / unseen label: DataError
    collate(features, spec) -> dict of tensors, with "labels"
    loss(output, batch, spec) -> scalar tensor (the task part)
    evaluate(model, features, spec, batch_size) -> dict of dev metrics (with "loss")
    build_head(backbone, spec) -> nn.Module
options holds task, text_column, text_b_column, label_column, regression (None = default).

Saving: `lmlab.save(task_model, tokenizer, dir)` writes the backbone's family and config plus
"task", weights under `backbone.` and `head.`; `lmlab.load(dir)` returns (TaskModel, tokenizer).
`finetune.finetune(...)` (CLI `lmlab finetune`) runs the training loop with a linear warmup/decay
schedule and writes report.json; `finetune.evaluate_task(...)` is `lmlab evaluate --task`.
"""
