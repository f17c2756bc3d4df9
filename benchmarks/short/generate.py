"""Write the hand-made short-text suite, `benchmarks/short/suite.tsv`, from templates and lines
written by hand. Deterministic: the same code writes the same file, byte for byte.

    python benchmarks/short/generate.py            # (re)write suite.tsv
    python benchmarks/short/generate.py --check    # exit 1 if suite.tsv is not what this writes

Every line is a one-line text whose label (pos or neg) a human reader finds obvious; a line whose
label could be argued was left out. Nothing here comes from a labeled data set: the templates,
words and lines are our own. Each category mixes template combinations (a seeded sample of the
product of the slots) with lines written by hand; within a category, the two labels are roughly
balanced.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.tsv"
SEED = 9  # the number; any fixed value would do
HEADER = ("category", "label", "text")

Row = tuple[str, str]  # (label, text)


def _rng(category: str) -> random.Random:
    """One generator a category, so that editing one category leaves the others' samples alone."""
    return random.Random(f"{SEED}:{category}")


def _fill(template: str, **slots: Iterable[str]) -> list[str]:
    """Every combination of the slots in `template`, in a fixed order."""
    names = sorted(slots)
    return [template.format(**dict(zip(names, values)))
            for values in itertools.product(*(list(slots[n]) for n in names))]


def _sample(rng: random.Random, label: str, options: list[str], k: int) -> list[Row]:
    return [(label, text) for text in rng.sample(options, min(k, len(options)))]


def _hand(label: str, lines: str) -> list[Row]:
    """Rows from a block of lines written by hand, one text a line."""
    return [(label, line.strip()) for line in lines.strip().splitlines() if line.strip()]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


POS_ADJ = ["great", "wonderful", "excellent", "brilliant", "superb", "fantastic", "amazing",
           "beautiful", "delightful", "charming", "terrific", "enjoyable", "moving", "gripping"]
NEG_ADJ = ["terrible", "awful", "boring", "dull", "bad", "horrible", "dreadful", "tedious",
           "lousy", "poor", "disappointing", "pointless", "forgettable", "lifeless"]
NOUNS = ["film", "movie", "show", "story", "sequel", "series"]


def polarity() -> list[Row]:
    rng = _rng("polarity")

    def phrases(adjs: list[str]) -> list[str]:
        out = []
        for adj, noun in itertools.product(adjs, NOUNS):
            out += [f"{adj} {noun}", f"{_a(adj)} {noun}", f"what {_a(adj)} {noun}",
                    f"the {noun} was {adj}", f"this {noun} is {adj}"]
        return out

    rows = _sample(rng, "pos", phrases(POS_ADJ), 18) + _sample(rng, "neg", phrases(NEG_ADJ), 18)
    rows += _sample(rng, "pos", _fill("I {v} this {n}", v=["loved", "enjoyed", "adored", "really liked"],
                                      n=NOUNS), 5)
    rows += _sample(rng, "neg", _fill("I {v} this {n}", v=["hated", "disliked", "could not stand",
                                                             "was bored by"], n=NOUNS), 5)
    rows += _hand("pos", """
        great film
        highly recommended
        a must see
        two thumbs up
        one of the best films I have ever seen
        a masterpiece
        worth every minute
        I would happily watch it again
        a joy from start to finish
        the kids loved it and so did I
    """)
    rows += _hand("neg", """
        a dull movie
        a total waste of time
        avoid this one
        one of the worst movies ever made
        I want my two hours back
        a complete mess
        I walked out halfway through
        painful to sit through
        awful from start to finish
        dull, far too long
    """)
    return rows


def negation() -> list[Row]:
    rng = _rng("negation")
    subjects = ["it", "the film", "the movie", "the plot", "the show"]
    was_not = ["was not", "wasn't", "is not", "isn't"]
    rows = _sample(rng, "pos", _fill("{s} {w} {a} at all", s=subjects, w=was_not,
                                     a=["bad", "boring", "dull", "disappointing"]), 12)
    rows += _sample(rng, "pos", _fill("{s} was never {a}", s=subjects, a=["boring", "dull"]), 4)
    rows += _sample(rng, "neg", _fill("{s} {w} {a}", s=subjects, w=was_not,
                                      a=["good", "funny", "interesting", "enjoyable", "entertaining",
                                         "worth watching"]), 12)
    rows += _sample(rng, "neg", _fill("I {d} {v} {o}", d=["did not", "didn't"], v=["like", "enjoy"],
                                      o=["it", "this film", "the movie"]), 5)
    rows += _hand("pos", """
        not bad at all
        never boring
        never a dull moment
        not a single boring scene
        I was not disappointed
        I wasn't bored for a second
        I couldn't stop watching
        no complaints at all
        I can't recommend it enough
        I have no regrets about watching it
        not once did I check my watch
        I could not find anything wrong with it
    """)
    rows += _hand("neg", """
        not good
        not worth the ticket price
        no redeeming qualities
        I would not recommend it
        don't bother
        nothing good to say about it
        not funny, not scary, not anything
        I was not impressed
        not my cup of tea
        the jokes never land
        I cannot recommend this film
        it didn't work for me
    """)
    return rows


def contrast() -> list[Row]:
    rng = _rng("contrast")
    part_pos = ["the cast is great", "the music is lovely", "the visuals are stunning",
                "the lead actress is wonderful", "the first half is fun", "the costumes are beautiful"]
    part_neg = ["the start is slow", "the first half drags", "the dialogue is clunky",
                "a few scenes run too long", "the effects look dated", "the middle sags a little"]
    whole_pos = ["the film as a whole is wonderful", "it is a great movie", "I really enjoyed it",
                 "it is well worth watching", "I loved it"]
    whole_neg = ["the film as a whole is a bore", "it is a dull movie", "I was bored throughout",
                 "it is a waste of time", "the movie falls flat"]
    rows: list[Row] = []
    for form in ("{p}, but {w}", "although {p}, {w}", "{w}, even though {p}"):
        rows += _sample(rng, "neg", _fill(form, p=part_pos, w=whole_neg), 6)
        rows += _sample(rng, "pos", _fill(form, p=part_neg, w=whole_pos), 6)
    rows += _hand("pos", """
        slow start, wonderful ending
        not much of a story, but a joy to watch
        a shaky start but it wins you over
        the plot has holes, but I loved every minute
        cheesy at times but utterly charming
        flawed, but brilliant
        rough around the edges but a real gem
        the effects are dated, but the story still works beautifully
        a bit long, yet worth every minute
    """)
    rows += _hand("neg", """
        great cast but a dull plot
        beautiful to look at but empty inside
        the trailer was great, the movie was not
        started strong, then fell apart
        a promising idea, badly executed
        good actors wasted on a terrible script
        fun for ten minutes, then a chore
        looks great, says nothing
        nice soundtrack, shame about the film
        the first ten minutes are great and then it goes downhill
    """)
    return rows


def intensity() -> list[Row]:
    rng = _rng("intensity")
    forms = ["{x}", "it was {x}", "the movie is {x}"]

    def with_forms(phrases: list[str]) -> list[str]:
        return [f.format(x=p) for p in phrases for f in forms]

    strong_pos = _fill("{i} {a}", i=["absolutely", "truly", "simply"],
                       a=["brilliant", "wonderful", "great", "beautiful", "fantastic"])
    strong_pos += _fill("{i} {a}", i=["really", "incredibly", "very"],
                        a=["good", "beautiful", "funny", "moving"])
    strong_neg = _fill("{i} {a}", i=["utterly", "truly", "really", "incredibly"],
                       a=["boring", "awful", "terrible", "dull", "disappointing"])
    strong_neg += ["absolutely awful", "absolutely terrible", "really bad", "extremely boring"]
    hedged_pos = ["pretty good", "quite good", "rather good", "pretty fun", "quite enjoyable",
                  "fairly entertaining", "pretty entertaining", "quite charming", "rather enjoyable"]
    hedged_neg = _fill("{h} {a}", h=["somewhat", "a bit", "slightly", "a little", "rather", "kind of"],
                       a=["disappointing", "boring", "dull", "tedious"])
    rows = _sample(rng, "pos", with_forms(strong_pos), 10)
    rows += _sample(rng, "neg", with_forms(strong_neg), 10)
    rows += _sample(rng, "pos", with_forms(hedged_pos), 10)
    rows += _sample(rng, "neg", with_forms(hedged_neg), 10)
    rows += _hand("pos", """
        absolutely brilliant
        pretty good
        really quite lovely
        easily the best film this year
        not perfect, but pretty good
        genuinely moving
        surprisingly good
        a solid, enjoyable film
        very very good
        incredibly well made
    """)
    rows += _hand("neg", """
        somewhat disappointing
        a little too boring
        mildly entertaining at best
        barely watchable
        hardly worth the effort
        far too long and rather dull
        a tad tedious
        painfully slow
        mostly boring
        a bit of a letdown
    """)
    return rows


def comparison() -> list[Row]:
    rng = _rng("comparison")
    refs = ["the book", "the first one", "the original", "I expected", "the trailer", "the reviews said",
            "his last film", "the first film"]
    better = _fill("{c} than {r}", c=["better", "much better", "far better", "way better"], r=refs)
    better += _fill("{s} is {c} than {r}", s=["it", "this one"], c=["better", "much better"],
                    r=["the original", "the first one", "the book"])
    better += _fill("the sequel is {c} than {r}", c=["better", "much better"],
                    r=["the original", "the first one"])
    worse = _fill("{c} than {r}", c=["worse", "much worse", "far worse", "even worse"], r=refs)
    worse += _fill("{s} is {c} than {r}", s=["it", "this one"], c=["worse", "much worse"],
                   r=["the original", "the first one", "the book"])
    worse += _fill("the sequel is {c} than {r}", c=["worse", "much worse"],
                   r=["the original", "the first one"])
    rows = _sample(rng, "pos", better, 10) + _sample(rng, "neg", worse, 10)
    rows += _sample(rng, "neg", _fill("not as {a} as {r}", a=["good", "funny", "exciting", "clever"],
                                      r=["the original", "the book", "the first one"]), 6)
    rows += _sample(rng, "pos", _fill("{a} than {r}", a=["more fun", "funnier", "more exciting",
                                                          "more moving"],
                                      r=["the original", "the book", "the first one"]), 5)
    rows += _sample(rng, "neg", _fill("{a} than {r}", a=["less fun", "less funny", "more boring",
                                                          "duller"],
                                      r=["the original", "the book", "the first one"]), 5)
    rows += _hand("pos", """
        better than the book
        the sequel surpasses the original
        a huge improvement on the first film
        lives up to the hype
        beats every other film this summer
        the best of the trilogy
        as good as the book, if not better
        I liked it even more the second time
        outshines the original in every way
        miles ahead of the competition
    """)
    rows += _hand("neg", """
        worse than the first one
        does not live up to the hype
        pales next to the original
        a big step down from his last film
        falls far short of the book
        I have seen better
        worse than watching paint dry
        the weakest of the trilogy
        the original did everything better
        not even close to the book
    """)
    return rows


TYPOS_POS = ["excelent", "exellent", "brillant", "briliant", "amazng", "beautifull", "wonderfull",
             "wondeful", "fantastc", "awsome", "increadible", "enjoyble"]
TYPOS_NEG = ["terible", "terrble", "horible", "horrable", "awfull", "aweful", "borring", "boaring",
             "dissapointing", "disapointing", "rediculous", "pathethic"]


def typos() -> list[Row]:
    rng = _rng("typos")
    frames = ["{w} movie", "the film was {w}", "{w} acting", "simply {w}"]
    rows = _sample(rng, "pos", [f.format(w=w) for f in frames for w in TYPOS_POS], 12)
    rows += _sample(rng, "neg", [f.format(w=w) for f in frames for w in TYPOS_NEG], 12)
    base_pos = ["great movie", "loved it", "best film ever", "absolutely amazing", "what a film",
                "highly recommended", "a true masterpiece", "brilliant acting"]
    base_neg = ["worst movie ever", "so boring", "total waste of time", "awful acting", "so bad",
                "do not watch", "a complete disaster", "terrible script"]
    shout = ["{x}", "{x}!!!"]
    rows += _sample(rng, "pos", [s.format(x=b.upper()) for b in base_pos for s in shout], 6)
    rows += _sample(rng, "neg", [s.format(x=b.upper()) for b in base_neg for s in shout], 6)
    rows += _hand("pos", """
        loved itttt
        sooo good
        greaaat movie
        amaaazing
        loooove this movie
        definately worth watching
        i reccomend it to every1
        gr8 film
        luv it
        best. movie. ever.
        MUST SEE!!!
        Absolutely Loved It
        sooooo good!!!
    """)
    rows += _hand("neg", """
        terible acting
        soooo boring
        booooring
        the worrrst
        ugh sooo bad
        dont waste ur time
        wat a waste
        the acting was soooo bad
        WORST. MOVIE. EVER.
        Not Worth It
        hated it!!!!!!
        Waste Of Money
        borrrring
    """)
    return rows


def emoji() -> list[Row]:
    rng = _rng("emoji")
    pos = ["😍", "👍", "❤️", "🔥", "🥰", "👏", ":)", ":-)", ":D"]
    neg = ["👎", "😡", "😴", "🤮", "🙄", "💩", ":(", ":-(", "😞"]
    neutral = ["watched it last night", "saw this with my brother", "just finished the movie",
               "the new season", "the ending", "the director's new film"]
    rows = [("pos", e) for e in pos] + [("neg", e) for e in neg]
    rows += _sample(rng, "pos", _fill("{n} {e}", n=neutral, e=pos), 8)
    rows += _sample(rng, "neg", _fill("{n} {e}", n=neutral, e=neg), 8)
    rows += _sample(rng, "pos", _fill("{e} {p}", e=pos, p=["loved it", "great film", "must see"]), 5)
    rows += _sample(rng, "neg", _fill("{e} {p}", e=neg, p=["waste of time", "so boring", "avoid"]), 5)
    rows += _hand("pos", """
        😍 loved it
        😍😍😍
        👍👍
        🍿🍿🍿 what a ride
        ❤️ this cast
        thank you for this film 🙏
    """)
    rows += _hand("neg", """
        👎 waste of time
        👎👎
        fell asleep 😴
        two hours of my life I won't get back 😡
        the plot 🙄
        🤦 why did I watch this
    """)
    return rows


def domains() -> list[Row]:
    rng = _rng("domains")
    in_person = ["the staff", "the waiter", "the manager", "the front desk"]
    on_phone = ["customer service", "support", "the helpline"]
    rows = _sample(rng, "pos", _fill("{s} {v}", s=in_person, v=["helped us right away",
                                                                "answered every question patiently",
                                                                "made us feel welcome"]), 4)
    rows += _sample(rng, "neg", _fill("{s} {v}", s=in_person, v=["ignored us for half an hour",
                                                                 "was rude to us",
                                                                 "argued with us about the bill"]), 4)
    rows += _sample(rng, "pos", _fill("{s} {v}", s=on_phone, v=["fixed my problem on the first call",
                                                                "called back within minutes"]), 3)
    rows += _sample(rng, "neg", _fill("{s} {v}", s=on_phone, v=["never called back", "hung up on me",
                                                                "kept me on hold for an hour"]), 3)
    rows += _hand("pos", """
        delivery was fast and the pasta delicious
        the battery lasts two full days
        battery life is excellent
        the camera takes sharp photos even at night
        arrived a day early and well packed
        the room was clean and spacious
        great location and comfy beds
        the app is fast and easy to use
        syncs perfectly across all my devices
        the pizza was hot and the crust was crispy
        fresh ingredients and generous portions
        best coffee in town
        these headphones sound amazing
        works perfectly out of the box
        checkout was quick and painless
        the shoes fit perfectly and are very comfortable
        setup took two minutes
        the driver was friendly and careful with the boxes
        the hotel breakfast was a feast
        great value for money
        my order arrived on time and intact
        the update made the app much faster
        this vacuum picks up everything
        the soup was rich and flavorful
    """)
    rows += _hand("neg", """
        the battery dies in an hour
        the screen cracked after a week
        stopped working after a month
        it overheats while charging
        the package arrived damaged
        arrived two weeks late
        the parcel never arrived
        the room smelled of smoke
        noisy room and a broken shower
        the pool was dirty
        the app crashes every time I open it
        the update broke everything
        the app keeps logging me out
        too many ads in this app
        the soup was cold and bland
        the steak was overcooked and chewy
        soggy fries and stale bread
        we waited an hour for our food
        the waiter forgot our order twice
        the refund took three months
        the zipper broke on the first day
        the sound is tinny and muffled
        they charged me twice this month
        the bed was hard and the sheets were stained
    """)
    return rows


def imdb_words() -> list[Row]:
    """Words that IMDB reviews use with one polarity but that are neutral, or the other way,
    in these sentences: ratings, predictable, script, cheap, long, low budget, rent, funny..."""
    rng = _rng("imdb_words")
    good = ["10/10", "9/10", "8/10", "7/10", "8 out of 10", "a solid 7/10", "5 stars", "five stars"]
    bad = ["1/10", "2/10", "3/10", "4/10", "1 out of 10", "2 out of 10", "one star", "zero stars"]
    forms = ["{r}", "my rating: {r}", "I give it {r}"]
    rows = _sample(rng, "pos", [f.format(r=r) for f in forms for r in good], 8)
    rows += _sample(rng, "neg", [f.format(r=r) for f in forms for r in bad], 8)
    rows += _hand("pos", """
        predictable but fun
        unpredictable thriller
        an unpredictable thriller that kept me guessing
        the ending was predictable, yet I loved every minute
        a clever script
        the script is sharp and witty
        cheap tickets and a great show
        cheap and delicious
        the battery lasts a long time
        long, but worth every minute
        low budget but brilliant
        low prices and friendly staff
        definitely worth renting
        the rent is low and the landlord is friendly
        money well spent
        deserves an Oscar
        the villain is deliciously evil
        the killer is terrifying, a great horror film
        it made me cry, a beautiful film
        sad but beautiful
        dark and disturbing, a masterpiece
        dumb fun, loved it
        a guilty pleasure
        slow cooked and tender
        a slow burn that pays off
        ice cold beer and crispy wings
        killer soundtrack
        simple and effective
        every bit as exciting as the trailer promised
        the best 90 minutes I have spent this year
    """)
    rows += _hand("neg", """
        the milk tasted funny
        the app is unpredictable and loses my files
        the brakes are unpredictable
        a classic case of bad customer service
        a perfect example of how not to make a film
        the only fun part was the popcorn
        the best part was the credits
        the best thing about it is that it ends
        highly recommended if you need a nap
        the rent went up again and the heating is broken
        the furniture feels cheap
        long lines and a long wait
        the trailer showed all the good parts
        the greatest disappointment of the year
        nothing special
        it won awards, but I cannot see why
        the original was better
        an epic fail
        a masterpiece of boredom
        a beautiful phone that broke within a week
    """)
    return rows


CATEGORIES: dict[str, Callable[[], list[Row]]] = {
    "polarity": polarity,
    "negation": negation,
    "contrast": contrast,
    "intensity": intensity,
    "comparison": comparison,
    "typos": typos,
    "emoji": emoji,
    "domains": domains,
    "imdb_words": imdb_words,
}


def rows() -> list[tuple[str, str, str]]:
    """(category, label, text) of every item, in category order; a text already used (in any
    category) is dropped, so every text appears once."""
    seen: set[str] = set()
    out = []
    for category, make in CATEGORIES.items():
        for label, text in make():
            if label not in ("pos", "neg") or not text or "\t" in text or "\n" in text:
                raise ValueError(f"bad row in {category}: {label!r} {text!r}")
            if text not in seen:
                seen.add(text)
                out.append((category, label, text))
    return out


def render() -> str:
    """The suite file's exact contents."""
    return "".join("\t".join(r) + "\n" for r in [HEADER, *rows()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SUITE, help="where to write (default: suite.tsv here)")
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    content = render()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == content
        print(f"{args.out}: {'up to date' if same else 'differs from what generate.py writes'}")
        return 0 if same else 1
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(content, encoding="utf-8", newline="\n")
    tmp.replace(args.out)
    n = content.count("\n") - 1
    print(f"wrote {n} items in {len(CATEGORIES)} categories to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
