"""models/REPORT.md and its figures, made from models/manifest.json after every build.

Tables follow the published ones (architecture, width multiplier, sparsity schedule,
quantization, training time, metrics, size) with the baselines beside each model; figures:
forecast against truth over a test week, and each keyword model's confusion matrix.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.errors import ModelLoadError
from tinyml_core.models import DEFAULT_KEYWORD_SMOOTHING, read_manifest

log = logging.getLogger(__name__)

FIGURES = "figures"


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files (no display needed), or None when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_report(models_dir: Path, datasets: dict[str, Any]) -> Path:
    try:
        manifest = read_manifest(models_dir)
    except ModelLoadError:
        manifest = {}
    figures = models_dir / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Model report", "",
             "Made by `python -m training.build` from models/manifest.json. Every number is "
             "measured on the test split by the shipped `.tflite.zlib` file through the "
             "collector's loader and interpreter.", ""]
    forecasters = {k: v for k, v in manifest.items() if v.get("task") == "forecast"}
    keyword = {k: v for k, v in manifest.items() if v.get("task") == "keyword"}
    if forecasters:
        lines += forecast_section(forecasters, models_dir, datasets.get("climate"))
    if keyword:
        lines += keyword_section(keyword, models_dir)
    path = models_dir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _stored(entry: dict[str, Any]) -> str:
    """What the file's constant tensors really are (int32 ones are shapes and biases)."""
    types = {k: v for k, v in entry.get("tensor_types", {}).items() if k != "int32"}
    return ", ".join(f"{count}× {name}" for name, count in sorted(types.items())) or "–"


def _recipe_cells(recipe: dict[str, Any]) -> list[str]:
    model, pruning = recipe.get("model", {}), recipe.get("pruning", {})
    sparsity = (f"{pruning.get('initial_sparsity', 0):.2f} → {pruning.get('final_sparsity', 0):.2f}"
                f" (ep. {pruning.get('begin_epoch')}–{pruning.get('end_epoch')})"
                if pruning.get("final_sparsity") else "none")
    return [str(model.get("architecture")), f"{model.get('width', 1):g}", sparsity,
            recipe.get("quantization", {}).get("mode", "none")]


def forecast_section(entries: dict[str, dict[str, Any]], models_dir: Path,
                     data: Any) -> list[str]:
    lines = ["## Forecasters (6 past readings, 10-minute step)", "",
             "| model | architecture | width | sparsity | quantization | weights stored | "
             "training | MAE T (°C) | MAE RH (%) | size (B) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, entry in entries.items():
        metrics = entry["metrics"]
        mae, persistence = metrics["mae"], metrics["persistence"]
        lines.append("| " + " | ".join([
            f"**{name}**", *_recipe_cells(entry["recipe"]), _stored(entry),
            f"{entry['training']['training_seconds']:.0f} s",
            f"{mae['temperature']:.3f}", f"{mae['humidity']:.3f}",
            str(entry["size_bytes"])]) + " |")
        published = entry.get("baselines", {}).get("published")
        if published:
            lines.append("| " + " | ".join([
                f"{name} published recipe", *_recipe_cells(published["recipe"]),
                _stored(published), f"{published['training_seconds']:.0f} s",
                f"{published['mae']['temperature']:.3f}", f"{published['mae']['humidity']:.3f}",
                str(published["size_bytes"])]) + " |")
        lines.append("| " + " | ".join([
            f"{name} persistence", "repeat last reading", "", "", "", "", "",
            f"{persistence['temperature']:.3f}", f"{persistence['humidity']:.3f}", ""]) + " |")
        margin_t = 1 - mae["temperature"] / persistence["temperature"]
        margin_h = 1 - mae["humidity"] / persistence["humidity"]
        limits = entry.get("constraints", {})
        notes.append(f"- {name} ({entry['output']['steps']} steps): {margin_t:.1%} lower MAE "
                     f"than persistence on temperature, {margin_h:.1%} on humidity; "
                     f"constraints {_limits(limits)}: "
                     f"{'met' if entry.get('constraints_met') else 'NOT met'}. Test split: "
                     f"{metrics['windows']} windows, "
                     f"{' to '.join(entry['data']['test_period'])}.")
        # Without the data (e.g. only keyword models were rebuilt) the last plot is kept.
        figure = plot_forecast_week(name, models_dir, data) if data is not None else \
            models_dir / FIGURES / f"{name}_test_week.png"
        if figure and figure.exists():
            notes.append(f"  ![{name} forecast vs truth]({FIGURES}/{figure.name})")
    notes += sensor_table(entries)
    data_files = next(iter(entries.values()))["data"]["files"]
    notes.append("- \"int8_weights\" on these tiny models stores float32: the converter only "
                 "quantizes weight tensors of 1024 elements or more (\"weights stored\" is "
                 "read from the file).")
    return [*lines, "", *notes, "",
            "Data: " + ", ".join(f"`{item['file']}`" for item in data_files)
            + " (Max Planck Institute for Biogeochemistry, Jena roof station, CC BY 4.0).", ""]


def sensor_table(entries: dict[str, dict[str, Any]]) -> list[str]:
    """MAE, persistence and skill with the inputs as recorded and as each sensor reads them."""
    rows = []
    for name, entry in entries.items():
        metrics = entry["metrics"]
        conditions = {"as recorded (0.01 °C, 0.01 %RH)": metrics,
                      **{_condition(sensor): result
                         for sensor, result in metrics.get("sensors", {}).items()}}
        for condition, result in conditions.items():
            cells = [name, condition]
            for feature in ("temperature", "humidity"):
                mae, base = result["mae"][feature], result["persistence"][feature]
                cells += [f"{mae:.3f}", f"{base:.3f}", f"{1 - mae / base:+.1%}"]
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Inputs as a sensor reads them (targets as recorded; persistence repeats the "
            "sensor's own last reading; `python -m training.evaluate NAME --sensor dht11`):", "",
            "| model | inputs | MAE T (°C) | persistence | skill | MAE RH (%) | persistence | "
            "skill |", "|---|---|---|---|---|---|---|---|", *rows, ""]


def _condition(key: str) -> str:
    sensor, _, averaged = key.partition(", ")
    return f"{sensor.upper()}, {averaged} per step" if averaged else \
        f"{sensor.upper()}, one read per step"


def _limits(limits: dict[str, float]) -> str:
    return ", ".join(f"{key} < {value:g}" if key != "min_accuracy" else f"accuracy > {value:g}"
                     for key, value in limits.items()) or "none"


def plot_forecast_week(name: str, models_dir: Path, data: Any) -> Path | None:
    """Truth against the forecast of the last step, over the first week of the test split."""
    plt = pyplot()
    if plt is None:
        return None
    from tinyml_core.models import load_forecaster

    from . import climate

    forecaster = load_forecaster(models_dir, name)
    steps = forecaster.contract.steps
    segment = max(data.parts["test"], key=len)
    week = segment.values[: 7 * 24 * 6 + climate.WINDOW + steps]
    first_week = [climate.Segment(segment.source, segment.start_time, week)]
    inputs, labels = climate.windows(first_week, steps)
    predicted = forecaster.predict(inputs, climate.window_end_times(first_week, steps))
    hours = (np.arange(len(labels)) + climate.WINDOW + steps - 1) / 6
    figure, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    for axis, feature, unit in ((axes[0], 0, "°C"), (axes[1], 1, "%RH")):
        axis.plot(hours, labels[:, -1, feature], color="black", lw=1, label="measured")
        axis.plot(hours, predicted[:, -1, feature], color="tab:orange", lw=1,
                  label=f"forecast {steps * 10} min ahead")
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[0].set_title(f"{name}: first test week from "
                      f"{time.strftime('%Y-%m-%d', time.gmtime(segment.start_time))}")
    axes[1].set_xlabel("hours")
    figure.tight_layout()
    path = models_dir / FIGURES / f"{name}_test_week.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def keyword_section(entries: dict[str, dict[str, Any]], models_dir: Path) -> list[str]:
    open_set = any("not_keywords" in entry["output"] for entry in entries.values())
    title = "8 words, unknown and silence" if open_set else "8 words"
    lines = [f"## Keyword spotting ({title}, mini speech commands, 800 test clips)", ""]
    if open_set:
        lines += ["Accuracy on the 800 keyword clips of the test split; an unknown or silence "
                  "answer to a keyword clip counts as wrong.", ""]
    lines += ["| model | front end | architecture | width | sparsity | quantization | training |"
              " latency (ms) | accuracy | size (kB) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    published_results = {"kws_a": ("93.75%", "88.0"), "kws_b": ("92.62%", "47.3"),
                         "kws_c": ("92.38%", "23.4")}
    notes = []
    for name, entry in entries.items():
        front = entry["input"]["front_end"]
        if front.get("kind") == "speech_embedding":
            front_cells = (f"{front['sample_rate'] // 1000} kHz, pretrained speech embedding "
                           f"({front['window_embeddings']} x 96 every "
                           f"{front['embedding_step_s'] * 1000:.0f} ms)")
        else:
            front_cells = (f"{front['sample_rate'] // 1000} kHz, {front['frame_length']}/"
                           f"{front['frame_step']}, {front['num_mel_bins']} mel, "
                           f"{front['num_coefficients']} MFCC")
        latency = entry.get("latency", {}).get("total_ms")
        lines.append("| " + " | ".join([
            f"**{name}**", front_cells, *_recipe_cells(entry["recipe"]),
            f"{entry['training']['training_seconds'] / 60:.1f} min",
            f"{latency:.2f}" if latency else "–",
            f"{entry['metrics']['accuracy']:.2%}", f"{entry['size_bytes'] / 1000:.1f}"]) + " |")
        published = entry.get("baselines", {}).get("published")
        if published:
            lines.append("| " + " | ".join([
                f"{name} published recipe", front_cells, *_recipe_cells(published["recipe"]),
                f"{published['training_seconds'] / 60:.1f} min", "",
                f"{published['accuracy']:.2%}", f"{published['size_bytes'] / 1000:.1f}"]) + " |")
        if name in published_results and not published:
            accuracy, size = published_results[name]
            lines.append(f"| {name} best published | {front_cells} | DS-CNN | | | | | | "
                         f"{accuracy} | {size} |")
        figure = plot_confusion(name, entry, models_dir)
        folds = entry.get("speaker_folds")
        if folds:
            notes.append(f"- {name} on voices it never heard: {folds['new_speakers']:.2%} "
                         f"({len(folds['rows'])} of {folds['folds']} folds of the training "
                         f"split by speaker, `{folds['command']}`); the same fold models score "
                         f"{folds['test_split']:.2%} on the test split, whose speakers they "
                         "mostly trained on"
                         + (f" (measured with {folds['measured_with']})."
                            if "measured_with" in folds else "."))
        notes.append(f"- {name}: constraints {_limits(entry.get('constraints', {}))}: "
                     f"{'met' if entry.get('constraints_met') else 'NOT met'}. "
                     f"![{name} confusion matrix]({FIGURES}/{figure.name})" if figure else "")
    return [*lines, "", *notes, "", *open_set_section(entries),
            "Data: mini speech commands (Speech Commands, Pete Warden, Google, CC BY 4.0), the "
            "fixed 6400/800/800 split in training/kws_split/; negatives.tar.xz (other words "
            "and background noise, same source and licence), 20 % held back.", ""]


def open_set_section(entries: dict[str, dict[str, Any]]) -> list[str]:
    """What the models say to what is not a keyword, and on a continuous stream."""
    lines = strangers_section(entries)
    rows = [(name, entry["metrics"]["held_back_negatives"]) for name, entry in entries.items()
            if "held_back_negatives" in entry["metrics"]]
    if rows:
        lines += ["### What is not a keyword (held-back negatives, never trained on)", "",
                  "| model | other words given a keyword label | noise given a keyword label |",
                  "|---|---|---|"]
        lines += [f"| {name} | {n['words_as_keyword']:.1%} of {n['word_clips']} | "
                  f"{n['noise_as_keyword']:.1%} of {n['noise_clips']} |" for name, n in rows]
        lines.append("")
    streams = [(name, entry["stream"]) for name, entry in entries.items() if "stream" in entry]
    if streams:
        first = streams[0][1]
        lines += [f"### On a continuous stream ({first['minutes']:.0f} min, {first['part']} part)",
                  "", "Built by `benchmarks/kws_stream.py --all --record` at seed "
                  f"{first['seed']}: every keyword clip of the part once, held-back other "
                  "words alone and in phrases, noise bursts, 1.5-3.5 s apart over a quiet "
                  "room, through the node's capture and the collector's decision. Recall "
                  "(keywords found with the right word) and false accepts per hour (a keyword "
                  "result where none was said, or the wrong word) by threshold; each model's "
                  "default in bold (its manifest's default_threshold: chosen on the same "
                  "stream built from the validation part, the most keywords at no more than "
                  "5 false accepts an hour).",
                  "",
                  "| threshold | " + " | ".join(f"{name} recall | {name} false/h"
                                                for name, _ in streams) + " |",
                  "|---|" + "---|---|" * len(streams)]
        by_threshold = [{row["threshold"]: row for row in stream["rows"]} for _, stream in streams]
        for threshold in sorted({t for rows in by_threshold for t in rows}):
            cells = []
            for (_, stream), rows in zip(streams, by_threshold, strict=True):
                row = rows.get(threshold)
                if row is None:
                    cells += ["-", "-"]
                    continue
                bold = "**" if abs(threshold - stream["default_threshold"]) < 1e-9 else ""
                cells += [f"{bold}{row['recall']:.1%}{bold}",
                          f"{bold}{row['false_accepts_per_hour']:.1f}{bold}"]
            lines.append(f"| {threshold:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def strangers_section(entries: dict[str, dict[str, Any]]) -> list[str]:
    """The headline: streams and single clips of speakers the scored model never heard."""
    rows = [(name, entry[key]) for name, entry in entries.items()
            for key in ("strangers", "strangers_in_rooms") if key in entry]
    if not rows:
        return []
    lines = ["### Voices the model never heard (speaker folds)", "",
             "Built by `benchmarks/kws_strangers.py --record`: each speaker fold's model (the "
             "recipe trained without a fifth of the training speakers, `python -m "
             "training.speakers MODEL --keep data/folds`) on a stream of the speakers it never "
             "heard, built as the course-split stream is (keywords, held-back other words "
             "alone and in phrases, noise bursts, through the node's capture and the "
             "collector's decision); the folds' counts added up. The default threshold and "
             "smoothing are chosen on the validation half of those speakers, measured on the "
             "other half. In rooms: the same streams and clips, each spoken item from its "
             "own place in one of 40 simulated rooms, heard through one simulated microphone "
             "(`--rooms SEED`, training/rooms.py); the default is the dry streams' choice.",
             "", "| model | default | keywords found | false accepts/h | stream (folds) | "
             "single clips: right word (top class) | other words 'unknown' | noise 'unknown' |",
             "|---|---|---|---|---|---|---|---|"]
    for name, result in rows:
        test, single = result["test"], result["singles"]
        at = test["at_default"]
        where = "" if result.get("rooms_seed") is None else \
            f" in rooms (seed {result['rooms_seed']})"
        lines.append(f"| {name}{where} | {result['default_threshold']:.2f}, smoothed over "
                     f"{result.get('smoothing', DEFAULT_KEYWORD_SMOOTHING)} windows | "
                     f"{at['recall']:.1%} | "
                     f"{at['false_accepts_per_hour']:.1f} | {test['speakers']} speakers, "
                     f"{test['keywords']} keywords, {test['minutes']:.0f} min "
                     f"({len(result.get('folds_scored', range(result['folds'])))} of "
                     f"{result['folds']} folds) | "
                     f"{single['right_word']:.1%} ({single['top_class_right']:.1%}) | "
                     f"{single['other_words_unknown']:.1%} | {single['noise_unknown']:.1%} |")
    return [*lines, ""]


def plot_confusion(name: str, entry: dict[str, Any], models_dir: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    matrix = np.array(entry["metrics"]["confusion"])
    labels = entry["output"]["labels"]
    title = f"{name}: {entry['metrics']['accuracy']:.2%} on {matrix.sum()} test clips"
    negatives = entry["metrics"].get("held_back_negatives", {})
    if "words_predicted" in negatives and {"unknown", "silence"} <= set(labels):
        # The split has no unknown or silence clips: those rows are the held-back negatives.
        matrix[labels.index("unknown")] = negatives["words_predicted"]
        matrix[labels.index("silence")] = negatives["noise_predicted"]
        title += "\n(unknown: held-back other words, silence: held-back noise)"
    path = models_dir / FIGURES / f"{name}_confusion.png"
    save_confusion_png(matrix, labels, title, path, plt)
    return path


def save_confusion_png(matrix: np.ndarray, labels: list[str], title: str, path: Path,
                       plt: Any) -> None:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center", fontsize=8,
                  color="white" if count > matrix.max() / 2 else "black")
    axis.set_xticks(range(len(labels)), labels, rotation=45)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
