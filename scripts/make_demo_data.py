#!/usr/bin/env python3
"""Makes ftexp's demo data set: Alpaca-format records about a grocery pantry, whose answers can be
checked exactly (so fine-tuning can be measured by exact-match accuracy, not only by loss).

    python3 scripts/make_demo_data.py                          # data/demo/alpaca.json, 3,000 records
    python3 scripts/make_demo_data.py --rows 100000 --out /tmp/big.json

    python3 scripts/make_demo_data.py --corpus data/demo/corpus.txt   # the plain-text corpus a demo
                                                                     # base model is pretrained on

Deterministic: the same --rows and --seed give the same file on every machine (Python's own
random.Random, no other dependency). The corpus states the same facts in prose (which aisle stocks
what, units and their short forms, doubled quantities) but never in the question/answer format, so a
model pretrained on it knows the domain's words and fine-tuning has to teach it to answer. Four kinds
of task, mixed evenly:
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


def corpus(rng, docs):
    """Prose about the pantry: one short paragraph per document."""
    out = []
    for _ in range(docs):
        kind = rng.randrange(4)
        if kind == 0:
            where = rng.choice(list(AISLES))
            items = rng.sample(AISLES[where], k=min(3, len(AISLES[where])))
            first = rng.choice(["The {a} aisle stocks {i}.", "You will find {i} in the {a} aisle.",
                                "Look for {i} in the {a} aisle."])
            out.append(first.format(a=where, i=", ".join(items[:-1]) + " and " + items[-1]) + " "
                       + " ".join(f"{i.capitalize()} belongs to the {where} aisle." for i in items))
        elif kind == 1:
            unit = rng.choice(list(UNITS))
            q = rng.randint(1, 50)
            out.append(f"The short form of {unit} is {UNITS[unit]}. So {q} {unit} are written {q} {UNITS[unit]}.")
        elif kind == 2:
            item, _ = rng.choice(ITEMS)
            unit = rng.choice(list(UNITS.values()))
            q = rng.randint(1, 12)
            out.append(f"A recipe for two uses {q} {unit} {item}. For four people it uses {2 * q} {unit} {item}, "
                       f"twice as much.")
        else:
            item, _ = rng.choice(ITEMS)
            unit = rng.choice(list(UNITS))
            q = rng.randint(1, 20)
            out.append(f"We need {q} {unit} of {item}. On the shopping list it goes as {item}, {q} {unit}.")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="data/demo/alpaca.json")
    ap.add_argument("--corpus", help="write the plain-text corpus here instead of the records")
    ap.add_argument("--docs", type=int, default=8000)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if args.corpus:
        with open(args.corpus, "w", encoding="utf-8") as f:
            f.write("\n\n".join(corpus(rng, args.docs)) + "\n")
        print(f"wrote {args.docs} documents to {args.corpus}")
        return
    tasks = [aisle, list_line, double, abbreviate]
    rows = [tasks[i % len(tasks)](rng) for i in range(args.rows)]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(rows)} records to {args.out}")


if __name__ == "__main__":
    main()
