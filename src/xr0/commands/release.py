"""Verbs for the released Xiaomi-Robotics-0 checkpoints: import-release, and export-release (an alias of
`xr0 export --format release`, kept so scripts written against it keep working)."""
from __future__ import annotations

from xr0.registry import COMMANDS


def _fail(exc: Exception) -> int:
    import sys

    print(f"xr0: error: {exc}", file=sys.stderr)
    return 2


@COMMANDS.register("import-release")
class ImportRelease:
    """Import a downloaded Xiaomi-Robotics-0 release (config.json, safetensors, processor) as an xr0 model."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("release_dir", help="local copy, e.g. from `huggingface-cli download <repo> --local-dir DIR`")
        p.add_argument("out_dir", help="xr0 export directory to write (model.safetensors + xr0.json)")
        p.add_argument("--robot-type", default=None,
                       help="released robot_type to make the checkpoint's embodiment (needed when there are several)")
        p.add_argument("--no-copy-files", action="store_true",
                       help="do not copy config/processor/tokenizer/remote code to OUT/release_files/")
        p.add_argument("--cameras", default="base,left_wrist",
                       help="camera names a client sends, in the model's view order (default: base,left_wrist)")
        p.add_argument("--view-labels", default=None,
                       help="the prompt's view label per camera, comma-separated (default for base,left_wrist: "
                            "'Base View,Left-Wrist View', the release README's LIBERO example)")
        p.add_argument("--hz", type=float, default=30.0, help="control rate the imported embodiment records")

    @staticmethod
    def run(args):
        from xr0.release.importer import import_release
        from xr0.release.keymap import KeyMapError
        from xr0.release.layout import ReleaseError

        try:
            cams = [c.strip() for c in args.cameras.split(",") if c.strip()]
            labels = [v.strip() for v in args.view_labels.split(",")] if args.view_labels else None
            rep = import_release(args.release_dir, args.out_dir, args.robot_type, not args.no_copy_files,
                                 cameras=cams, view_labels=labels, hz=args.hz)
        except (KeyMapError, ReleaseError) as exc:
            return _fail(exc)
        print(f"imported {rep.n_tensors} tensors -> {rep.out}")
        print(f"embodiments (one per released robot_type): {', '.join(rep.embodiments)}")
        if rep.embodiment:
            print(f"checkpoint embodiment: {rep.embodiment}; serve it as released: xr0 serve {rep.out} "
                  f"--noise-seed 42 (cameras {', '.join(cams)})")
        else:
            print("checkpoint embodiment: none chosen (several robot types); pass --robot-type to pick one")
        for name in rep.added:
            print(f"added {name} (tied to the input embeddings; the release omits it)")
        for name in rep.ignored:
            print(f"ignored {name} (recomputed buffer)")
        return 0


def export_release_verb(source, out_dir, template=None, max_shard_gb=5.0, allow_state_norm=False) -> int:
    """`xr0 export --format release` (and its alias `xr0 export-release`)."""
    from xr0.release.exporter import export_release
    from xr0.release.keymap import KeyMapError
    from xr0.release.layout import ReleaseError

    try:
        out = export_release(source, out_dir, template, max_shard_gb, allow_state_norm)
    except (KeyMapError, ReleaseError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(f"exported {source} -> {out} (release layout)")
    if not (out / "modeling_mibot.py").is_file():
        print("note: no remote code copied; add modeling_mibot.py, configuration_mibot.py, processing_mibot.py "
              "and the tokenizer files from the release (--template RELEASE_DIR) before serving")
    return 0


@COMMANDS.register("export-release")
class ExportRelease:
    """Alias of `xr0 export --format release`: an xr0 model in the released MiBoTForActionGeneration layout."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("source", help="xr0 export directory, or a Lightning checkpoint started from an import")
        p.add_argument("out_dir")
        p.add_argument("--template", default=None,
                       help="release directory to copy remote code, tokenizer and processor files from "
                            "(default: SOURCE/release_files when SOURCE is an import)")
        p.add_argument("--max-shard-gb", type=float, default=5.0)
        p.add_argument("--allow-state-norm", action="store_true",
                       help="export even though the model expects normalised states (the release feeds raw state)")

    @staticmethod
    def run(args):
        return export_release_verb(args.source, args.out_dir, args.template, args.max_shard_gb, args.allow_state_norm)
