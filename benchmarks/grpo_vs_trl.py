"""GRPO speed: must's stage 4 against TRL's GRPOTrainer on the same model, prompts and settings (issue 6).

    python benchmarks/grpo_vs_trl.py                 # text case, both frameworks, 3 alternating repeats
    python benchmarks/grpo_vs_trl.py --repeats 1 --steps 4  # quicker
    python benchmarks/grpo_vs_trl.py --case audio    # ours alone on the tiny MusicLALM, synthetic tracks

The same tiny text-only causal LM (a Llama built from config, same seed, same initial weights), the
same prompts and reward, G=8, completion length 16, the same learning rate, loss type (dapo), clip
range, beta=0, one optimisation pass per batch, constant learning rate, full fine-tuning. Our stage
runs with group refill off (`refill_groups`, DAPO's dynamic sampling: TRL has none, so it would only add
sampling work on our side).
Each framework runs ``--warmup`` steps that are not timed, then ``--steps`` timed steps; runs
alternate (ours, TRL, ours, TRL, ...) so that load from other processes on a shared machine falls on
both alike, and the table reports the median run. Peak memory is the peak resident set size above
the level at the run's start, sampled every 5 ms (on the CPU torch allocates through malloc, so RSS is
what there is; freed memory is handed back with malloc_trim between runs).

Both frameworks run with the same number of torch threads (``--threads``, default 1: on a 2-core box
shared with other work, OpenMP threads spin-waiting for a busy core make multi-thread timings swing
several-fold). Besides wall-clock rates, the CPU time the process used per rollout is reported: it
depends little on what else runs on the machine.

The last line printed is ``speedup_vs_trl=<float>``: our rollouts/s over TRL's (medians).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import logging
import os
import statistics
import string
import tempfile
import threading
import time
import warnings

import torch


def tiny_tokenizer(extra_tokens: int):
    """A character-level tokenizer (digits, letters, punctuation) plus ``extra_tokens`` filler words, offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.digits + string.ascii_letters + " :-?.,'")
    words = ["<pad>", "</s>", "<unk>", *chars, *[f"<w{i}>" for i in range(extra_tokens)]]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_lm(tokenizer, hidden: int, layers: int, seed: int):
    """A small Llama built from config with the tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 32, 1),
        num_key_value_heads=max(hidden // 64, 1),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


SOURCES = ["drums", "bass", "lead vocal", "piano", "synth pad", "electric guitar", "strings", "brass"]


def prompts(n: int) -> list[dict]:
    """MusTBench-style TSG questions as plain text prompts (about 90 characters each)."""
    out = []
    for i in range(n):
        src, which = SOURCES[i % len(SOURCES)], ("first appear" if i % 2 else "finally disappear")
        out.append({"prompt": f"Track {i:03d}. Question: when does the {src} {which}? Answer with a time as M:SS. Answer:"})
    return out


def time_reward(prompts, completions, **kwargs) -> list[float]:
    """Toy reward: 1 for an M:SS time anywhere in the completion, else the share of digits."""
    import re

    return [1.0 if re.search(r"\d:\d\d", c) else sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


class PeakRSS:
    """Peak resident set size above the starting level, sampled every 5 ms in a thread (MiB)."""

    def __enter__(self):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.start) / 2**20


def run_ours(model, tok, data, args, share_prefix: bool = True) -> dict:
    import lightning as L

    from must.rl.policy import TextPolicy
    from must.rl.timing import Timings
    from must.stages.grpo import GRPOStage, Options

    opts = Options(
        batch_size=args.prompts,
        num_generations=args.G,
        max_completion_length=args.T,
        lr=args.lr,
        loss_type=args.loss_type,
        epsilon_low=0.2,
        epsilon_high=0.28,
        beta=0.0,
        num_iterations=1,
        refill_groups=False,
        max_grad_norm=1.0,
        share_prefix=share_prefix,
    )
    timings = Timings()
    stage = GRPOStage(TextPolicy(model, tok), [time_reward], data, opts, timings=timings)
    stamps = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *a, **k):
            stamps.append((time.perf_counter(), time.process_time()))

    trainer = L.Trainer(
        max_steps=args.warmup + args.steps,
        accelerator="cpu" if args.device == "cpu" else "gpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    with PeakRSS() as mem:
        trainer.fit(stage)
    parts = {k: timings.seconds[k] for k in ("prefill", "decode", "reward", "update")}
    return {"stamps": stamps, "mem": mem.mib, "parts": parts, "reward": trainer.callback_metrics.get("reward")}


def run_trl(model, tok, data, args) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.prompts * args.G,
            num_generations=args.G,
            max_completion_length=args.T,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            loss_type=args.loss_type,
            epsilon=0.2,
            epsilon_high=0.28,
            beta=0.0,
            num_iterations=1,
            use_vllm=False,
            max_steps=args.warmup + args.steps,
            max_grad_norm=1.0,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=args.device == "cpu",
            bf16=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=args.seed,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[time_reward],
            args=cfg,
            train_dataset=Dataset.from_list(data),
            processing_class=tok,
            callbacks=[Clock()],
        )
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts would drown the table
        with PeakRSS() as mem:
            trainer.train()
    return {"stamps": stamps, "mem": mem.mib, "parts": {}}


def rates(res: dict, args) -> dict:
    """Timed part only: from the end of the last warm-up step to the end of the last step."""
    st = res["stamps"]
    (w0, c0), (w1, c1) = st[args.warmup - 1], st[args.warmup + args.steps - 1]
    rollouts = args.steps * args.prompts * args.G
    return {
        "rollouts_s": rollouts / (w1 - w0),
        "steps_s": args.steps / (w1 - w0),
        "cpu_ms": 1000 * (c1 - c0) / rollouts,
        "mem": res["mem"],
        "parts": res["parts"],
    }


def run_audio(args) -> None:
    """Ours alone on the tiny MusicLALM with synthetic tracks: encoder calls and where a step's time goes."""
    from omegaconf import OmegaConf

    from must.data.config import DataConfig
    from must.models.config import ModelConfig
    from must.rl.data import SynthTracks

    data_cfg = DataConfig(min_seconds=20, max_seconds=60, train_tracks=args.tracks)
    tracks = SynthTracks(data_cfg, "train")
    for i in range(len(tracks)):  # render before timing (the runner's stages share these renders)
        tracks[i]
    lora = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"llm": {"lora": lora}}))
    print(f"audio case: tiny MusicLALM (LLM LoRA r=16), synthetic tracks 20-60 s, {args.audio_tracks} tracks x "
          f"{args.audio_questions} questions per step, G={args.G} T={args.T} loss={args.loss_type} beta=0")
    print("| prompt path | rollouts/s | steps/s | encoder calls/step | encode | prefill | decode | reward | update |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for share in (True, False):
        print(audio_row(args, model_cfg, data_cfg, tracks, share), flush=True)


def audio_row(args, model_cfg, data_cfg, tracks, share: bool) -> str:
    """One timed audio run (shared or plain prompt path) as a table row."""
    import lightning as L

    from must.models.lalm import MusicLALM
    from must.rewards import must_reward
    from must.rl.data import QAPrompts
    from must.rl.policy import MusicPolicy
    from must.rl.timing import Timings
    from must.stages.grpo import GRPOStage, Options, set_trainable, train_globs

    torch.manual_seed(args.seed)
    model = MusicLALM.from_config(model_cfg)
    set_trainable(model, *train_globs(model, Options()))
    policy = MusicPolicy(model, data_cfg.sample_rate)  # no cross-step cache: every step encodes its tracks
    opts = Options(batch_size=args.audio_tracks, questions_per_clip=args.audio_questions,
                   num_generations=args.G, max_completion_length=args.T, lr=args.lr,
                   loss_type=args.loss_type, refill_groups=False, share_prefix=share)
    timings = Timings()
    stage = GRPOStage(policy, [must_reward], QAPrompts(tracks, args.audio_questions, args.seed), opts, seed=args.seed,
                      timings=timings)
    stamps, marks = [], {}

    class Clock(L.Callback):
        def on_train_batch_end(self, *a, **k):
            stamps.append(time.perf_counter())
            if len(stamps) == args.warmup:
                marks.update(timings.seconds, rollouts=timings.counts["rollouts"], calls=policy.encoder_calls)

    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Clock()])
    trainer.fit(stage)
    seconds = stamps[-1] - stamps[args.warmup - 1]
    keys = ("encode", "prefill", "decode", "reward", "update")
    c = {k: timings.seconds[k] - marks.get(k, 0.0) for k in keys}
    c["rollouts"] = timings.counts["rollouts"] - marks.get("rollouts", 0)
    calls = (policy.encoder_calls - marks["calls"]) / args.steps
    shares = " | ".join(f"{c[k] / seconds:.0%}" for k in keys)
    label = "shared (prefill once per prompt)" if share else "plain (prompt repeated G times)"
    return f"| {label} | {c['rollouts'] / seconds:.1f} | {args.steps / seconds:.3f} | {calls:.1f} | {shares} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--G", type=int, default=8, help="completions per prompt")
    p.add_argument("--T", type=int, default=16, help="completion length, tokens")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab-extra", type=int, default=4000, help="filler tokens on top of the characters")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: on a shared box, OpenMP spin-waits distort multi-thread timings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["ours", "trl"], default=None)
    p.add_argument("--plain", action="store_true", help="also run ours without prefix sharing (an ablation)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--case", choices=["text", "audio"], default="text")
    p.add_argument("--tracks", type=int, default=16, help="audio case: synthetic training tracks")
    p.add_argument("--audio-tracks", type=int, default=2, help="audio case: tracks per step")
    p.add_argument("--audio-questions", type=int, default=2, help="audio case: questions per track")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.case == "audio":
        run_audio(args)
        return

    tok = tiny_tokenizer(args.vocab_extra)
    base = tiny_lm(tok, args.hidden, args.layers, args.seed)
    data = prompts(64)
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"model: Llama hidden={args.hidden} layers={args.layers} vocab={len(tok)} params={n_params / 1e6:.2f}M; "
        f"G={args.G} T={args.T} prompts/step={args.prompts} steps={args.steps} (+{args.warmup} warm-up) "
        f"loss={args.loss_type} lr={args.lr} beta=0 device={args.device} threads={torch.get_num_threads()}"
    )
    results = {"ours": [], "trl": [], "plain": []}
    runners = {"ours": run_ours, "trl": run_trl, "plain": lambda *a: run_ours(*a, share_prefix=False)}
    names = [args.only] if args.only else ["ours", "trl"]
    if args.plain:
        names.append("plain")
    for r in range(args.repeats):
        for name in names:
            torch.manual_seed(args.seed + r)
            model = copy.deepcopy(base).to(args.device)
            res = rates(runners[name](model, tok, data, args), args)
            results[name].append(res)
            extra = ""
            if res["parts"]:
                total = sum(res["parts"].values())
                extra = "  " + " ".join(f"{k}={v / total:.0%}" for k, v in res["parts"].items())
            print(
                f"run {r} {name:5s}: {res['rollouts_s']:7.1f} rollouts/s  {res['steps_s']:6.3f} steps/s  "
                f"{res['cpu_ms']:6.1f} CPU ms/rollout  "
                f"peak +{res['mem']:.0f} MiB{extra}",
                flush=True,
            )
            del model

    def med(name, key):
        return statistics.median(x[key] for x in results[name])

    print("\n| framework | rollouts/s | optimizer steps/s | CPU ms per rollout | peak memory (MiB above start) |")
    print("|---|---:|---:|---:|---:|")
    labels = (("ours", "must GRPOStage"), ("trl", "TRL GRPOTrainer"),
              ("plain", "must GRPOStage, plain prompt path (share_prefix=false)"))
    for name, label in labels:
        if results[name]:
            print(f"| {label} | {med(name, 'rollouts_s'):.1f} | {med(name, 'steps_s'):.3f} | "
                  f"{med(name, 'cpu_ms'):.1f} | {med(name, 'mem'):.0f} |")
    if results["ours"] and results["trl"]:
        # CPU time is what each framework consumed, whatever else shares the cores; wall clock is the headline
        print(f"speedup_vs_trl_cpu_time={med('trl', 'cpu_ms') / med('ours', 'cpu_ms'):.2f}")
        print(f"speedup_vs_trl={med('ours', 'rollouts_s') / med('trl', 'rollouts_s'):.2f}")


if __name__ == "__main__":
    main()
