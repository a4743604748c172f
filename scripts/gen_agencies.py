#!/usr/bin/env python3
"""Deterministic generator of synthetic agency bet files.

    python3 scripts/gen_agencies.py [--agencies N] [--bets M] [--seed S]
                                    [--winners W] [--winning-number K] [-o DIR]

Writes DIR/agency-1.csv … DIR/agency-N.csv (default: agencies/, 5 agencies of
3000 bets, seed 7574), one bet per line in the agency-file format
`first name,last name,document,birthdate,number` with UTF-8 (accented) names and
LF line ends. The number of winning bets per agency is fixed by the arguments
(`winners_for` below), so tests and the demo know the expected result: with the
defaults, agencies 1…5 have 2, 3, 4, 2 and 0 winners. The same arguments always produce the same bytes
(Python's `random.Random` with a fixed seed), so the files in the repository can be
regenerated and checked. Large values of --bets give benchmark data.
Standard library only.
"""

import argparse
import random
import sys
from datetime import date, timedelta
from pathlib import Path

FIRST = ["Santiago", "Valentina", "Tiago", "Sofía", "Matías", "Martina", "Joaquín",
         "Lucía", "Agustín", "Camila", "Benjamín", "Julieta", "Nicolás", "Inés",
         "Tomás", "Renée", "Ángel", "Zoë", "Iñaki", "María José"]
LAST = ["González", "Rodríguez", "Gómez", "Fernández", "López", "Díaz", "Martínez",
        "Pérez", "García", "Sánchez", "Romero", "Sosa", "Álvarez", "Torres", "Ruiz",
        "Núñez", "Peña", "Muñoz", "Olmos", "Ibáñez"]


def winners_for(agency: int, base: int) -> int:
    """Winning bets of agency `agency`: base, base+1, base+2, … cycling over 3 values,
    and the last agency of five or more gets none (as in the course data)."""
    return base + (agency - 1) % 3


def generate(agency: int, bets: int, winners: int, winning: int, rng: random.Random):
    win_lines = set(rng.sample(range(bets), min(winners, bets)))
    start = date(1940, 1, 1)
    for i in range(bets):
        first = rng.choice(FIRST)
        if rng.random() < 0.3:
            first += " " + rng.choice(FIRST)
        last = rng.choice(LAST)
        document = f"{rng.randrange(10_000_000, 99_999_999):08d}"
        born = start + timedelta(days=rng.randrange(0, 365 * 65))
        if i in win_lines:
            number = winning
        else:
            number = rng.randrange(0, 9999)
            if number >= winning:
                number += 1  # never the winning number by accident
        yield f"{first},{last},{document},{born.isoformat()},{number}\n"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=3000, help="bets per agency")
    parser.add_argument("--seed", type=int, default=7574)
    parser.add_argument("--winners", type=int, default=2,
                        help="base number of winners per agency (see winners_for)")
    parser.add_argument("--winning-number", type=int, default=7574)
    parser.add_argument("-o", "--output", default="agencies")
    args = parser.parse_args(argv)
    if args.agencies < 1 or args.bets < 0 or args.winners < 0:
        parser.error("--agencies must be ≥ 1, --bets and --winners ≥ 0")
    if not 0 <= args.winning_number <= 9998:
        parser.error("--winning-number must be in 0..=9998")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for agency in range(1, args.agencies + 1):
        rng = random.Random(args.seed * 1_000_003 + agency)
        winners = winners_for(agency, args.winners)
        if args.agencies >= 5 and agency == args.agencies:
            winners = 0
        path = out / f"agency-{agency}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            f.writelines(generate(agency, args.bets, winners, args.winning_number, rng))
        print(f"{path}: {args.bets} bets, {min(winners, args.bets)} winners")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
