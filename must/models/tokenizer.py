"""An offline tokenizer for the tiny LLM: byte-level BPE where every digit and ``:`` is its own token.

Built in milliseconds from a small built-in corpus (the words of the MusTBench-style questions and of
the synthetic questions, answers and captions: about 3.3 characters per token on them), so tests and
the default recipe never touch a hub. Any text still encodes
(byte-level alphabet), and ``M:SS`` times always tokenise as digits and ``:``, which is what the
``digits`` time embedding relies on.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

#: ChatML, as Qwen2 and SmolLM2 use; the assistant turn ends with ``<|im_end|>`` (the EOS).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
You are a music expert. Times are written M:SS. Answer with a time, a letter or an interval.
When does the first appear in the track? When does the last disappear from the track?
At what time does the enter come in start begin? When does the stop leave drop out end?
What change happens at in this track? Which of the following best describes the change?
Describe the change that happens at. Order the following transitions chronologically.
In which interval is the arousal energy highest lowest? Give the interval or intervals.
Options: A B C D E F. The answer is. X Y Z then before after first second third.
drums kick snare hihat hi-hat cymbal percussion bass bassline guitar electric acoustic piano keys
organ synth synthesizer pad lead strings violin cello brass trumpet saxophone flute vocals voice
vocal singer choir melody harmony chord chords arpeggio beat rhythm groove tempo key loudness
brightness density texture timbre section intro verse chorus bridge outro break drop build up
instrument instruments enters exits fades fade in out becomes gets louder quieter softer faster
slower brighter darker denser sparser higher lower major minor modulation change changes shift
calm intense energetic relaxed tense peaceful aggressive mood arousal valence emotion music song
track clip segment boundary transition description caption the a an and or of to with from is are
it its this that at in on by for as into while over under new full whole song plays playing joins
joined remains continues sustained steady rising falling increase decrease no none only both all
seconds second minute minutes time start end beginning middle ending
A Ab An At B BPM Bb C Calm Consider D Describe Driving E Eb Energetic Everything F Flowing G Gentle
Here In Intense Moderate More No Nothing Powerful Quiet Relaxed Steady Suddenly The There Three Warm
What When Which X Y Z a about accelerates active activity and appear are around arousal as at audio
balanced bass be beat becomes before best bright brightens brighter busier busy calm calmest can
carries change changes chronological climb come comes continues correct crisper dark darkens darker
decreases denser describes disappear do does down driving drop drops drum duration dynamics end
energetic energy enter enters everything fade fades fall falls fewer finally first flowing following
for gentle gets gives good groove guitar happen happening happens harmony have heard hi-hat high
highest in increases intense intensity interval into intro is it its join joins key kick last lead
least leave leaves level loud louder lowest major mellower minor mix moderate moderately modulates
more most music musical notes noticeable occur occurs of off on opens option order out outro pace
pad part parts passage pattern patterns play playing plays point powerful quickens quiet quieter
relaxed relaxes rhythm rhythmic rises rolled roughly s section set sets shifts silent slows snare
soft softens softer sound sparse sparser speeds start starts steady stop stops string swells synth
tempo temporal that the there these they thins this three through timbre time timestamp to tone
track transition transitions turns up vocals volume warm what which while with without
enters leaves highest lowest order X → Y → Z 0:20–0:35
"""


def build_tiny_tokenizer(
    extra_words: list[str] | None = None, vocab_size: int = 1536
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus (plus ``extra_words``); deterministic."""
    tok = Tokenizer(models.BPE(unk_token=None))
    # Digits one by one and punctuation alone, *before* byte-level splitting, so BPE never merges
    # "1:2" or "23" into one token: the model reads and writes times digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [_CORPUS] + ["".join(" " + w for w in extra_words or [])]  # leading spaces: words mid-sentence
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token=None,
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
