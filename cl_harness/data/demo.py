"""The quickstart's demo data: short topic sentences generated from templates, deterministic per seed and split."""

from __future__ import annotations

import random
import zlib

DEMO_LABELS: list[str] = ["sports", "cooking", "astronomy", "finance", "music", "weather", "medicine", "travel"]

# About 30 topic words per topic; every sentence mixes two or three of them with neutral filler.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "sports": (
        "goalkeeper", "referee", "stadium", "tournament", "penalty kick", "marathon", "sprinter", "league table",
        "halftime score", "free throw", "scoreboard", "football coach", "championship final", "team captain",
        "relay race", "tennis racket", "hockey puck", "offside rule", "batting average", "playoff game",
        "swimming heats", "rugby scrum", "basketball court", "home run", "medal ceremony", "training drills",
        "cheering fans", "cycling race", "boxing match", "locker room",
    ),
    "cooking": (
        "frying pan", "garlic", "recipe", "oven", "chopping board", "olive oil", "pastry dough", "simmering sauce",
        "spatula", "cinnamon", "roasted vegetables", "soup pot", "kitchen knife", "whisk", "marinade",
        "baking tray", "fresh basil", "pancake batter", "stir fry", "grated cheese", "rolling pin", "spice rack",
        "slow cooker", "bread crust", "salad dressing", "boiling pasta", "chopped onions", "dumplings",
        "tomato stew", "butter and flour",
    ),
    "astronomy": (
        "telescope", "galaxy", "comet", "nebula", "planetary orbit", "distant planet", "meteor shower",
        "black hole", "constellation", "supernova", "space probe", "lunar eclipse", "asteroid belt",
        "observatory", "star cluster", "light year", "red giant", "moons of Jupiter", "solar flare", "Milky Way",
        "exoplanet", "cosmic dust", "gravitational pull", "rings of Saturn", "star chart", "astronaut",
        "rocket launch", "dwarf star", "lunar crater", "planetarium",
    ),
    "finance": (
        "stock market", "interest rate", "mortgage", "savings account", "dividend", "inflation", "bond yield",
        "credit card debt", "household budget", "tax return", "investment portfolio", "bank loan",
        "exchange rate", "pension fund", "quarterly earnings", "hedge fund", "retirement savings", "shareholder",
        "unpaid invoice", "accountant", "recession", "currency market", "profit margin", "balance sheet",
        "credit score", "share price", "insurance premium", "venture capital", "payroll", "central bank",
    ),
    "music": (
        "guitar", "melody", "orchestra", "drummer", "piano chords", "concert", "new album", "choir", "violin",
        "song lyrics", "saxophone", "rhythm section", "symphony", "bass line", "vinyl record", "songwriter",
        "music festival", "band rehearsal", "vocal harmony", "microphone", "tempo", "jazz band", "opera singer",
        "catchy chorus", "playlist", "trumpet", "sheet music", "recording studio", "cello", "encore",
    ),
    "weather": (
        "thunderstorm", "weather forecast", "humidity", "rain showers", "snowfall", "heat wave", "morning fog",
        "hurricane", "wind gusts", "drizzle", "temperature drop", "cloud cover", "hailstones", "frost",
        "barometer", "tornado warning", "monsoon", "sleet", "sunny spells", "blizzard", "weather radar",
        "rainbow", "storm front", "morning dew", "flood warning", "cold snap", "drought", "lightning",
        "overcast sky", "sea breeze",
    ),
    "medicine": (
        "doctor", "vaccine", "prescription", "hospital ward", "surgeon", "blood pressure", "antibiotics", "nurse",
        "high fever", "chest x-ray", "clinic", "stethoscope", "diagnosis", "painkillers", "physical therapy",
        "allergy", "immune system", "heart rate", "bandage", "pharmacy", "yearly check-up", "infection",
        "emergency room", "dosage", "symptoms", "medical chart", "blood test", "vitamins", "flu shot",
        "patient recovery",
    ),
    "travel": (
        "passport", "airport", "suitcase", "hotel booking", "train ticket", "boarding pass", "tour guide",
        "sightseeing", "lost luggage", "flight delay", "hostel", "road trip", "souvenir", "travel itinerary",
        "backpack", "customs line", "cruise ship", "city map", "guidebook", "jet lag", "beach resort", "visa",
        "layover", "city tour", "rental car", "check-in desk", "ferry", "postcard", "border crossing",
        "departure gate",
    ),
}

WHO = (
    "my neighbor", "a colleague", "the new intern", "my cousin", "our teacher", "a stranger on the bus",
    "my older sister", "the shop owner", "a friend from school", "the man next door", "my uncle", "our landlord",
)
WHEN = (
    "last week", "yesterday afternoon", "on Sunday morning", "after lunch", "earlier today", "late at night",
    "during the holidays", "a few days ago", "this morning", "before dinner", "on the way home", "last month",
)
FEEL = (
    "surprisingly interesting", "a bit confusing", "really exciting", "quite boring", "hard to forget",
    "worth a second look", "more complicated than expected", "oddly relaxing",
)

# {a}, {b}, {c}: topic words; {who}, {when}, {feel}: neutral filler.
TEMPLATES = (
    "{when}, {who} told me a long story about the {a} and the {b}.",
    "{who} could not stop talking about the {a}, the {b} and the {c} {when}.",
    "I read a short article {when} about the {a}, and it mentioned the {b} too.",
    "Everyone in the room agreed that the {a} was {feel}, especially next to the {b}.",
    "{when} we spent almost an hour discussing the {a} and the {b} with {who}.",
    "The notes on the table listed the {a}, the {b} and the {c}, and nothing else.",
    "{who} asked me {when} whether the {a} really matters as much as the {b}.",
    "There was a short video {when} showing the {a}, followed by a clip about the {b}.",
    "Honestly, the part about the {a} was {feel}, but the {b} and the {c} were better.",
    "{who} wrote a quick message {when} saying the {a} had something to do with the {b}.",
    "My favorite question in the quiz {when} was about the {a}, not the {b}.",
    "We kept a small notebook about the {a}, the {b} and the {c} for the whole month.",
)


def _capitalize(sentence: str) -> str:
    """The sentence with its first letter in upper case."""
    return sentence[:1].upper() + sentence[1:]


def make_sentence(rng: random.Random, topic: str) -> str:
    """One demo sentence about ``topic``."""
    a, b, c = rng.sample(TOPIC_WORDS[topic], 3)
    template = rng.choice(TEMPLATES)
    text = template.format(a=a, b=b, c=c, who=rng.choice(WHO), when=rng.choice(WHEN), feel=rng.choice(FEEL))
    return _capitalize(text)


def _topic_sentences(topic: str, count: int, seed: int, split: str) -> list[str]:
    """``count`` distinct sentences about ``topic`` from the (seed, split, topic) random stream."""
    rng = random.Random(f"cl-harness-demo:{seed}:{split}:{topic}")
    sentences: dict[str, None] = {}
    attempts = 0
    while len(sentences) < count and attempts < count * 50:
        sentence = make_sentence(rng, topic)
        if _is_test_sentence(sentence) == (split == "test"):
            sentences.setdefault(sentence, None)
        attempts += 1
    return list(sentences)


def _is_test_sentence(sentence: str) -> bool:
    """A fixed quarter of all sentences is reserved for test splits, so train and test never share one."""
    return zlib.crc32(sentence.encode("utf-8")) % 4 == 0


def generate_demo_rows(labels: list[str], per_class: int, seed: int, split: str) -> list[dict]:
    """``per_class`` rows ``{"text", "label"}`` per topic in ``labels``, shuffled; deterministic for (seed, split)."""
    unknown = [label for label in labels if label not in TOPIC_WORDS]
    if unknown:
        raise ValueError(f"unknown demo topics {unknown}; the demo topics are {', '.join(DEMO_LABELS)}")
    rows = [
        {"text": text, "label": label}
        for label in labels
        for text in _topic_sentences(label, per_class, seed, split)
    ]
    random.Random(f"cl-harness-demo:{seed}:{split}:order").shuffle(rows)
    return rows
