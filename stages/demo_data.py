"""Stage demo_data: scikit-learn's bundled handwritten digits as an ImageFolder of PNGs.

    python stages/demo_data.py OUT_DIR
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

from finetuner.data.demo import write_digits


def main(out_dir: str) -> None:
    write_digits(out_dir)


if __name__ == "__main__":
    run_stage("demo_data", main, "OUT_DIR")
