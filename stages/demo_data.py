"""Stage demo_data: scikit-learn's bundled handwritten digits as an ImageFolder of PNGs.

    python stages/demo_data.py OUT_DIR
"""
import sys

from finetuner.data.demo import write_digits

if __name__ == "__main__":
    write_digits(sys.argv[1])
