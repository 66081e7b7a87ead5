#!/usr/bin/env python3
"""Makes ftexp's demo data set: Alpaca-format records about a grocery pantry, whose answers can be
checked exactly (so fine-tuning can be measured by exact-match accuracy, not only by loss).

    python3 scripts/make_demo_data.py                          # data/demo/alpaca.json, 3,000 records
    python3 scripts/make_demo_data.py --rows 100000 --out /tmp/big.json

Deterministic: the same --rows and --seed give the same file on every machine (Python's own
random.Random, no other dependency). Four kinds of task, mixed evenly:
  aisle        "Which aisle stocks basil?"                          -> "Spices"
  list line    "Write this as a shopping-list line." / "2 cups of rice" -> "- rice: 2 cups"
  double       "Double this quantity." / "3 tbsp butter"            -> "6 tbsp butter"
  abbreviate   "Abbreviate the unit." / "4 tablespoons"             -> "4 tbsp"
"""
import argparse
import json
import random

AISLES = {
    "Produce": ["apples", "bananas", "carrots", "onions", "garlic", "lemons", "spinach", "tomatoes", "potatoes", "peppers"],
    "Dairy": ["milk", "butter", "yogurt", "cheddar", "cream", "eggs", "feta", "mozzarella"],
    "Bakery": ["bread", "bagels", "rolls", "croissants", "tortillas", "muffins"],
    "Spices": ["basil", "oregano", "cumin", "paprika", "cinnamon", "nutmeg", "thyme", "turmeric", "pepper"],
    "Pantry": ["rice", "flour", "sugar", "pasta", "oats", "lentils", "honey", "vinegar", "oil", "beans"],
    "Frozen": ["peas", "ice cream", "corn", "berries", "pizza", "waffles"],
    "Meat": ["chicken", "beef", "pork", "turkey", "bacon", "sausages"],
    "Beverages": ["coffee", "tea", "juice", "water", "soda", "cocoa"],
}
ITEMS = [(item, aisle) for aisle, items in AISLES.items() for item in items]
UNITS = {"tablespoons": "tbsp", "teaspoons": "tsp", "grams": "g", "kilograms": "kg", "millilitres": "ml",
         "litres": "l", "ounces": "oz", "pounds": "lb", "cups": "cups", "pieces": "pcs"}
AISLE_QUESTIONS = ["Which aisle stocks {item}?", "Where in the store do I find {item}?",
                   "Name the aisle for {item}.", "In which aisle are {item} kept?"]


def aisle(rng):
    item, where = rng.choice(ITEMS)
    return {"instruction": rng.choice(AISLE_QUESTIONS).format(item=item), "input": "", "output": where}


def list_line(rng):
    item, _ = rng.choice(ITEMS)
    unit = rng.choice(list(UNITS))
    qty = rng.randint(1, 20)
    return {"instruction": "Write this as a shopping-list line.", "input": f"{qty} {unit} of {item}",
            "output": f"- {item}: {qty} {unit}"}


def double(rng):
    item, _ = rng.choice(ITEMS)
    unit = rng.choice(list(UNITS.values()))
    qty = rng.randint(1, 12)
    return {"instruction": "Double this quantity.", "input": f"{qty} {unit} {item}", "output": f"{2 * qty} {unit} {item}"}


def abbreviate(rng):
    unit = rng.choice(list(UNITS))
    qty = rng.randint(1, 50)
    return {"instruction": "Abbreviate the unit.", "input": f"{qty} {unit}", "output": f"{qty} {UNITS[unit]}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="data/demo/alpaca.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tasks = [aisle, list_line, double, abbreviate]
    rows = [tasks[i % len(tasks)](rng) for i in range(args.rows)]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(rows)} records to {args.out}")


if __name__ == "__main__":
    main()
