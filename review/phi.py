"""The PHI gate: HIPAA Safe Harbor de-identification of free text before it leaves the database.

Three layers, all offline:
- Presidio's pattern recognizers (emails, URLs, IPs, phones, cards, SSNs, IBANs...), run on a
  blank spaCy pipeline because no trained spaCy model can be installed from PyPI;
- our own patterns for what Presidio has no recognizer for or scores too low: labelled record,
  plan, account, licence, vehicle and device numbers, dates, ages over 89, addresses, ZIP codes;
- names from context (titles, "patient X", "wife X") and from the names-dataset lexicon
  (first name + surname pairs, "Surname, First", known first names mid-sentence).

What the gate cannot decide (a bare 5-digit number, a capitalised word next to a known name,
a low-score Presidio hit) makes the text *unsure*: such items are held for a human.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import pickle
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

NAMES_DATASET_VERSION = "3.3.1"
# Countries whose common names make the lexicon; rank is the name's popularity there.
NAME_COUNTRIES = ("US", "GB", "CA", "AU", "IE", "NZ", "ZA", "IN", "NG", "PH", "MX", "ES", "FR",
                  "DE", "IT", "BR", "CN", "HK", "TW", "JP", "KR", "VN", "PK", "EG", "SA", "TR",
                  "PL", "RU", "NL", "PT", "GR", "IL", "IR", "BD", "KE", "GH", "JM", "CO", "AR")
FIRST_NAME_MAX_RANK = 3000
LAST_NAME_MAX_RANK = 5000


class PhiGateUnavailable(RuntimeError):
    """The de-identification libraries are missing or broken: nothing may be exported."""


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    source: str


@dataclass
class ScrubResult:
    text: str
    findings: list[Finding] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)

    @property
    def is_unsure(self) -> bool:
        return bool(self.unsure)


# --- Word lists ---------------------------------------------------------------------------

# Capitalised words that are names in the lexicon but, here, almost always are not.
NOT_NAMES = {
    "the", "a", "an", "and", "or", "but", "if", "in", "on", "at", "to", "for", "of", "with",
    "by", "from", "as", "is", "are", "was", "were", "be", "been", "has", "have", "had", "do",
    "does", "did", "can", "could", "should", "would", "will", "may", "might", "must", "shall",
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "it", "its",
    "this", "that", "these", "those", "there", "here", "than", "then", "not", "no", "yes",
    "all", "any", "each", "every", "some", "most", "more", "less", "many", "much", "few",
    "after", "before", "during", "since", "until", "while", "about", "above", "below",
    "between", "into", "over", "under", "again", "also", "only", "very", "same", "other",
    "patient", "patients", "doctor", "dr", "nurse", "clinic", "hospital", "ward", "unit",
    "heart", "blood", "lung", "liver", "kidney", "brain", "bone", "skin", "eye", "head",
    "chest", "back", "neck", "arm", "leg", "hand", "foot", "acute", "chronic", "severe",
    "mild", "moderate", "type", "stage", "grade", "class", "trial", "study", "review",
    "therapy", "treatment", "dose", "daily", "weekly", "monthly", "year", "years", "month",
    "week", "day", "days", "today", "yesterday", "tomorrow", "morning", "evening", "night",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "january", "february", "march", "april", "june", "july", "august", "september", "october",
    "november", "december", "spring", "summer", "autumn", "winter", "fall", "christmas",
    "male", "female", "man", "woman", "men", "women", "boy", "girl", "child", "children",
    "baby", "infant", "adult", "adults", "elderly", "mother", "father", "son", "daughter",
    "wife", "husband", "sister", "brother", "family", "guidelines", "guideline", "evidence",
    "aspirin", "insulin", "warfarin", "heparin", "metformin", "statin", "statins", "vitamin",
    "cancer", "diabetes", "stroke", "asthma", "covid", "sars", "hiv", "aids", "copd", "ckd",
    "icu", "er", "ed", "ct", "mri", "ecg", "ekg", "bp", "hr", "mg", "ml", "kg", "iv", "po",
    "history", "presents", "presented", "admitted", "discharged", "reports", "denies",
    "given", "started", "stopped", "taking", "takes", "recommend", "consider", "compare",
    "compared", "versus", "vs", "risk", "benefit", "safe", "safety", "first", "second",
    "third", "new", "old", "young", "long", "short", "high", "low", "normal", "early", "late",
    "left", "right", "upper", "lower", "general", "primary", "secondary", "medical",
    "clinical", "emergency", "care", "health", "public", "national", "international",
    "american", "british", "european", "english", "french", "german", "spanish", "chinese",
    "indian", "african", "asian", "latin", "north", "south", "east", "west", "central",
    "street", "road", "avenue", "county", "city", "state", "university", "center", "centre",
    "medicine", "surgery", "pediatrics", "cardiology", "oncology", "neurology", "please",
    "thanks", "thank", "hello", "hi", "dear", "regards", "note", "plan", "assessment",
    "question", "answer", "summary", "background", "methods", "results", "conclusion",
    "conclusions", "objective", "design", "setting", "she", "he", "her", "his", "him", "they",
    "them", "their", "we", "our", "us", "you", "your", "i", "my", "me", "mr", "mrs", "ms",
    "miss", "sir", "madam", "pt", "hx", "dx", "rx", "tx", "sx", "fx", "pmh", "yo", "ago",
    "per", "via", "both", "either", "neither", "whether", "because", "although", "though",
    "however", "therefore", "thus", "hence", "next", "last", "previous", "prior", "current",
    "recent", "recently", "still", "already", "ever", "never", "always", "often", "sometimes",
    "usually", "well", "good", "bad", "better", "worse", "best", "worst", "pain", "fever",
    "cough", "rash", "nausea", "vomiting", "diarrhea", "headache", "fatigue", "dyspnea",
    "sepsis", "infection", "pneumonia", "fracture", "injury", "trauma", "biopsy",
    "scan", "test", "tests", "lab", "labs", "level", "levels", "count", "rate", "score",
    "mass", "lesion", "tumor", "tumour", "node", "nodes", "pressure", "sugar", "glucose",
    "grace", "hope", "faith", "joy", "bill", "mark", "rose", "page", "chance",
    "case", "cases", "group", "groups", "control", "placebo", "drug", "drugs", "medication",
}

# Eponyms: "Parkinson disease", "Graves' disease", "Wilson's disease" are not people.
EPONYM_FOLLOWERS = re.compile(
    r"^(?:['’]s?)?\s+(?:disease|syndrome|sign|signs|test|score|criteria|classification|scale|"
    r"procedure|operation|maneuver|manoeuvre|reflex|phenomenon|law|equation|formula|ulcer|"
    r"palsy|fracture|tumou?r|lymphoma|sarcoma|node|nodes|triad|index|method|technique|"
    r"disorder|anomaly|malformation|lesion|cell|cells|catheter|block|approach|rule|rules|"
    r"criterion|staging|grade|grading|type|repair|incision|position)\b",
    re.IGNORECASE)


def _lexicon_path() -> Path:
    return Path(settings.VAR_DIR) / "phi" / f"names-dataset-{NAMES_DATASET_VERSION}.json"


_lexicon_lock = threading.Lock()


@lru_cache(maxsize=1)
def name_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), lower-cased: built once from names-dataset, then cached."""
    path = _lexicon_path()
    with _lexicon_lock:
        if not path.exists():
            _build_lexicon(path)
        data = json.loads(path.read_text())
    return frozenset(data["first"]), frozenset(data["last"])


def _build_lexicon(path: Path) -> None:
    spec = importlib.util.find_spec("names_dataset")
    if spec is None or not spec.origin:
        raise PhiGateUnavailable("names-dataset is not installed; install requirements.txt "
                                 "(names-dataset==3.3.1) before exporting.")
    folder = Path(spec.origin).parent / "v3"

    def common(file_name: str, max_rank: int) -> list[str]:
        # The package's own loader builds far more than we need; read its data directly.
        with gzip.open(folder / file_name) as handle:
            table: dict[str, Any] = pickle.load(handle)  # noqa: S301 - shipped package data
        keep = []
        for name, info in table.items():
            ranks = info.get("rank") or {}
            if (name.isalpha() and len(name) > 1 and name.lower() not in NOT_NAMES
                    and any((ranks.get(country) or max_rank + 1) <= max_rank
                            for country in NAME_COUNTRIES)):
                keep.append(name.lower())
        return sorted(set(keep))

    logger.info("building the name lexicon from names-dataset (once, ~20 s)")
    data = {"first": common("first_names.pkl.gz", FIRST_NAME_MAX_RANK),
            "last": common("last_names.pkl.gz", LAST_NAME_MAX_RANK)}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


# --- Presidio -----------------------------------------------------------------------------

PRESIDIO_KINDS = {
    "EMAIL_ADDRESS": "EMAIL", "URL": "URL", "IP_ADDRESS": "IP", "PHONE_NUMBER": "PHONE",
    "US_SSN": "SSN", "CREDIT_CARD": "ACCOUNT", "IBAN_CODE": "ACCOUNT", "US_BANK_NUMBER":
    "ACCOUNT", "US_DRIVER_LICENSE": "LICENSE", "US_PASSPORT": "ID", "US_ITIN": "ID",
    "MEDICAL_LICENSE": "LICENSE", "UK_NHS": "MRN", "DATE_TIME": "DATE", "CRYPTO": "ACCOUNT",
    "MAC_ADDRESS": "DEVICE",
}
PRESIDIO_CONFIDENT = 0.4
# Low-score hits worth a human look; licence/bank/passport recognizers fire on any code.
UNSURE_KINDS = {"EMAIL", "URL", "IP", "PHONE", "SSN"}


@lru_cache(maxsize=1)
def _presidio() -> Any:
    try:
        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError as error:
        raise PhiGateUnavailable(f"presidio-analyzer is not installed ({error}); install "
                                 "requirements.txt before exporting.") from error

    # The e-mail recognizer checks top-level domains with tldextract, which would try to
    # download the public suffix list; the snapshot inside the package is enough.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(),
                                                                cache_dir=None)

    class BlankSpacyEngine(SpacyNlpEngine):  # type: ignore[misc]
        """Tokenisation only: the pattern recognizers need no trained model."""

        def load(self) -> None:
            # presidio ships py.typed but sets `self.nlp = None` unannotated: mypy types it None.
            self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]

    # It warns once per recognizer for every language we did not ask for.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    engine = BlankSpacyEngine(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


# --- Patterns -----------------------------------------------------------------------------

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_STATES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|"
    "Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|"
    "Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|"
    "New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|"
    "Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|"
    "West Virginia|Wisconsin|Wyoming|AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|"
    "MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|"
    "WY|DC")
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
           r"Place|Pl|Terrace|Ter|Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Crescent|Close|"
           r"Row|Trail|Trl)")
_CAP = r"[A-Z][a-zA-Z'’\-]+"
_ID_VALUE = r"(?P<value>[A-Za-z]{0,4}[-#]?\d[A-Za-z0-9\-/.]{2,}[A-Za-z0-9])"

# (kind, pattern, group to redact); labelled identifiers first so the label picks the kind.
_LABELLED = [
    ("FAX", r"\bfax(?:\s*(?:number|no\.?|#))?\s*[:#]?\s*(?P<value>\+?[\d()][\d()\s.\-]{6,}\d)"),
    ("SSN", r"\b(?:SSN|social security(?:\s*(?:number|no\.?|#))?)\s*[:#]?\s*(?:is\s+)?"
     r"(?P<value>\d{3}[-\s]?\d{2}[-\s]?\d{4})"),
    ("MRN", r"\b(?:MRN|medical record(?:\s*(?:number|no\.?|#))?|chart(?:\s*(?:number|no\.?|#))|"
     r"hospital (?:number|no\.?|#)|patient (?:id|number|no\.?|#)|NHS(?:\s*(?:number|no\.?))?)"
     r"\s*[:#]?\s*(?:is\s+)?" + _ID_VALUE),
    ("HEALTH_PLAN", r"\b(?:health plan(?:\s*(?:id|number|no\.?|#))?|member(?:\s*(?:id|number|"
     r"no\.?|#))|policy(?:\s*(?:id|number|no\.?|#))|insurance(?:\s*(?:id|number|no\.?|#))|"
     r"subscriber(?:\s*(?:id|number|no\.?|#))|group(?:\s*(?:number|no\.?|#))|"
     r"medicaid(?:\s*(?:id|number|no\.?|#))?|medicare(?:\s*(?:id|number|no\.?|#))?|"
     r"beneficiary(?:\s*(?:id|number|no\.?|#))?)\s*[:#]?\s*(?:is\s+)?" + _ID_VALUE),
    ("ACCOUNT", r"\b(?:account|acct\.?|billing|invoice|bank account|card)(?:\s*(?:number|no\.?|"
     r"#|id))?\s*[:#]?\s*(?:is\s+)?" + _ID_VALUE),
    ("LICENSE", r"\b(?:licen[cs]e|DEA|NPI|certificate|registration|driver'?s licen[cs]e|"
     r"DL)(?:\s*(?:number|no\.?|#|id))?\s*[:#]?\s*(?:is\s+)?" + _ID_VALUE),
    ("VEHICLE", r"\b(?:VIN|vehicle identification number|licen[cs]e plate|plate(?:\s*"
     r"(?:number|no\.?|#))?|registration plate)\s*[:#]?\s*(?:is\s+)?"
     r"(?P<value>[A-Z0-9][A-Z0-9\- ]{3,16}[A-Z0-9])"),
    ("DEVICE", r"\b(?:serial(?:\s*(?:number|no\.?|#))?|S/N|SN|device(?:\s*(?:id|number|no\.?|"
     r"#|identifier))|UDI|IMEI|model(?:\s*(?:number|no\.?|#))|lot(?:\s*(?:number|no\.?|#))?)"
     r"\s*[:#]?\s*(?:is\s+)?(?P<value>[A-Za-z0-9(][A-Za-z0-9()\-/.]{3,}[A-Za-z0-9])"),
    ("ID", r"\b(?:passport|employee|badge|student|case|record|reference|ref|ticket|"
     r"identifier|ID)(?:\s*(?:number|no\.?|#|id))?\s*[:#]?\s*(?:is\s+)?" + _ID_VALUE),
]

_PATTERNS: list[tuple[str, str, str | int]] = [
    ("EMAIL", r"\b[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+\b", 0),
    ("URL", r"\b(?:https?://|ftp://|www\.)[^\s<>\"')\]]+", 0),
    ("URL", r"\b[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.(?:com|org|net|edu|gov|io|info|biz|health|"
     r"us|uk|ca|au|de|fr|me|co)(?:/[^\s<>\"')\]]*)?(?=[\s,;)\]]|\.(?:\s|$)|$)", 0),
    ("IP", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b", 0),
    ("IP", r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,6}:"
     r"(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?\b", 0),
    ("SSN", r"\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b", 0),
    ("PHONE", r"(?:(?<=\s)|(?<=^)|(?<=[(:,]))(?:\+?1[\s.\-]?)?\(?\d{3}\)?[\s.\-]?\d{3}[\s.\-]\d{4}"
     r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?\b", 0),
    ("PHONE", r"\+\d{1,3}[\s.\-]?\(?\d{1,4}\)?(?:[\s.\-]?\d{2,4}){2,4}\b", 0),
    ("PHONE", r"\b\(?0\d{2,4}\)?[\s\-]?\d{3,4}[\s\-]?\d{3,4}\b", 0),
    ("DATE", r"\b\d{4}-\d{1,2}-\d{1,2}\b", 0),
    ("DATE", r"\b\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})\b", 0),
    ("DATE", r"\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH + r"\.?,?(?:\s+\d{4})?\b", 0),
    ("DATE", r"\b" + _MONTH + r"\.?\s+\d{1,2}(?:st|nd|rd|th)?\b(?:,?\s+\d{4})?", 0),
    ("DATE", r"\b" + _MONTH + r"\.?,?\s+(?:of\s+)?\d{4}\b", 0),
    ("DATE", r"\b(?:on|since|from|until|till|by|dated|DOB|born|admitted|discharged|seen|"
     r"d\.o\.b\.?|date of birth)\s*:?\s*(?P<value>\d{1,2}/\d{1,2})\b", "value"),
    ("DATE", r"\b(?:DOB|d\.o\.b\.?|date of birth|born(?: on)?)\s*:?\s*(?P<value>\S+(?:\s+\S+){0,2}"
     r"?\d{4})", "value"),
    ("DATE", r"\b(?:Christmas|Thanksgiving|Easter|New Year's)(?: Day| Eve)?(?:,?\s+\d{4})?\b",
     0),
    ("AGE", r"\b(?:9\d|1[0-4]\d)(?:\s*|-)(?:years?|yrs?|y)(?:\s*|-)old\b", 0),
    ("AGE", r"\b(?:9\d|1[0-4]\d)\s*(?:yo|y/o|y\.o\.|yr old|year-old)\b", 0),
    ("AGE", r"\b(?:aged?|age:)\s*(?P<value>9\d|1[0-4]\d)\b", "value"),
    ("AGE", r"\b(?P<value>9\d|1[0-4]\d)\s*(?:M|F|male|female|man|woman)\b", "value"),
    ("AGE", r"\b(?:nonagenarian|centenarian|supercentenarian)\b", 0),
    ("LOCATION", r"\b\d{1,6}\s+(?:" + _CAP + r"\s+){1,3}" + _STREET + r"\b\.?"
     r"(?:,?\s*(?:Apt|Apartment|Unit|Suite|Ste|#)\.?\s*\w+)?", 0),
    ("LOCATION", r"\b(?:P\.?\s?O\.?\s*Box|Post Office Box)\s+\d+\b", 0),
    ("LOCATION", r"\b(?:Apt|Apartment|Suite|Unit)\.?\s*#?\s*\d+[A-Z]?\b", 0),
    ("LOCATION", r"\b(?P<value>\d{5}-\d{4})\b", "value"),
    ("LOCATION", r"\b(?i:ZIP code|ZIP|zipcode|postal code|postcode)\s*:?\s*(?P<value>\d{5}|"
     r"[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b", "value"),
    ("LOCATION", r"\b(?:" + _STATES + r")\s+(?P<value>\d{5})\b", "value"),
    ("LOCATION", r"\b(?P<value>[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2})\b", "value"),
    ("LOCATION", r"\b(?P<value>" + _CAP + r"(?:\s" + _CAP + r"){0,2}),\s+(?:" + _STATES
     + r")\b", "value"),
    ("LOCATION", r"\b(?:lives|living|resides|residing|resident|moved|relocated|born|grew up|"
     r"travell?ed|visiting|town|city|village|suburb|neighbou?rhood|borough)\s+(?:in|to|at|of|"
     r"from|near)\s+(?:the\s+)?(?P<value>" + _CAP + r"(?:\s" + _CAP + r"){0,2})", "value"),
    ("LOCATION", r"\b(?P<value>" + _CAP + r"(?:\s" + _CAP + r")?\s(?:County|Parish|Township|"
     r"Borough|Village|Heights|Springs|Falls|Beach|Valley))\b", "value"),
    ("LOCATION", r"\b(?:from|in|near|at)\s+(?P<value>" + _CAP + r"(?:\s" + _CAP + r")?)"
     r"(?=\s+(?:Hospital|Clinic|Medical Center|Health Center|General|Memorial|Infirmary))",
     "value"),
    ("VEHICLE", r"\b(?=[A-HJ-NPR-Z0-9]*\d)(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])[A-HJ-NPR-Z0-9]{17}\b",
     0),
    ("ID", r"\b(?=[A-Za-z0-9\-]*\d)(?=[A-Za-z0-9\-]*[A-Za-z])[A-Za-z]{1,5}-?\d{5,}[A-Za-z0-9]*\b",
     0),
    ("ID", r"(?<![\d.,])\b\d{7,}\b(?![.,]\d)", 0),
    ("ID", r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", 0),
]

_NAME_TITLES = re.compile(
    r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Nurse|Sister|Brother|Father|Rev|Sr|Sra|Mme|"
    r"Mlle|Herr|Frau)\.?\s+(?P<value>(?:[A-Z]\.\s?)?" + _CAP + r"(?:\s+(?:[A-Z]\.\s?)?" + _CAP
    + r"){0,2})")
# The cue matches in any case ("Signed: Reyes", "CC: Hughes"); the name must be capitalised.
_NAME_CONTEXT = re.compile(
    r"\b(?i:patient|pt|named|name is|name:|called|husband|wife|son|daughter|mother|father|"
    r"brother|sister|spouse|partner|caregiver|carer|guardian|granddaughter|grandson|niece|"
    r"nephew|friend|neighbou?r|colleague|referred by|seen by|signed|attending|resident|"
    r"surgeon|physician|GP|nurse|midwife|contact|cc|regards|thanks|from|to|with|"
    r"Ms|Mr|Mrs|per)\s*[:,]?\s+(?P<value>" + _CAP + r"(?:\s+[A-Z]\.)?(?:\s+" + _CAP
    + r"){0,2})")
_SURNAME_FIRST = re.compile(r"\b(?P<last>" + _CAP + r"),\s+(?P<first>" + _CAP + r")\b")
_INITIAL_SURNAME = re.compile(r"\b(?P<value>[A-Z]\.\s?(?:[A-Z]\.\s?)?" + _CAP + r")")
_CAP_RUN = re.compile(_CAP + r"(?:\s+(?:[A-Z]\.\s+)?" + _CAP + r"){0,3}")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*|[\"“(]\s*)$")


@lru_cache(maxsize=1)
def _compiled() -> tuple[list[tuple[str, re.Pattern[str]]],
                         list[tuple[str, re.Pattern[str], str | int]]]:
    labelled = [(kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in _LABELLED]
    case_sensitive = {"LOCATION", "VEHICLE"}
    patterns = [(kind, re.compile(pattern, 0 if kind in case_sensitive else re.IGNORECASE),
                 group) for kind, pattern, group in _PATTERNS]
    return labelled, patterns


@lru_cache(maxsize=1)
def _any_name() -> frozenset[str]:
    first_names, last_names = name_lexicon()
    return first_names | last_names


def _is_name_word(word: str, lexicon: frozenset[str]) -> bool:
    # All-capitals words are acronyms (HIV, TB, II) far more often than shouted names.
    return (not word.isupper() and word.lower() in lexicon
            and word.lower() not in NOT_NAMES)


def _at_sentence_start(text: str, start: int) -> bool:
    return bool(_SENTENCE_START.search(text[max(0, start - 4):start]))


def _eponym(text: str, end: int) -> bool:
    return bool(EPONYM_FOLLOWERS.match(text[end:end + 40]))


def _name_findings(text: str) -> tuple[list[Finding], list[tuple[int, int]]]:
    first_names, last_names = name_lexicon()
    any_name = _any_name()
    findings: list[Finding] = []
    surnames: list[tuple[int, int]] = []

    def add(start: int, end: int, source: str) -> None:
        if not _eponym(text, end):
            findings.append(Finding("NAME", start, end, source))

    for match in _NAME_TITLES.finditer(text):
        add(match.start("value"), match.end("value"), "title")
    for match in _NAME_CONTEXT.finditer(text):
        words = match.group("value").split()
        # Keep only the leading words that look like a name, "patient Maria Lopez Has" -> 2.
        kept = []
        for word in words:
            bare = word.rstrip(".")
            if bare.lower() in NOT_NAMES:
                break
            kept.append(word)
        if not kept:
            continue
        # Drop a possessive ("Hughes's", "Hughes'") only: rstrip("'’s") made "Hughes" "Hughe".
        looks_named = any(_is_name_word(re.sub(r"['’]s?$", "", w), any_name) for w in kept)
        if looks_named:
            end = match.start("value") + len(" ".join(kept))
            add(match.start("value"), end, "context")
    for match in _SURNAME_FIRST.finditer(text):
        if (_is_name_word(match.group("last"), last_names)
                and _is_name_word(match.group("first"), first_names)):
            add(match.start(), match.end(), "surname-first")
    for match in _INITIAL_SURNAME.finditer(text):
        surname = match.group("value").split(".")[-1].strip()
        if _is_name_word(surname, last_names):
            add(match.start("value"), match.end("value"), "initial")
    for match in _CAP_RUN.finditer(text):
        # (start, end, word) of each capitalised word, relative to the run.
        spans = [(m.start(), m.end(), m.group()) for m in re.finditer(_CAP, match.group())]
        base = match.start()
        for index, (start, end, word) in enumerate(spans):
            word_start = base + start
            bare = re.sub(r"['’]s$", "", word)
            following = spans[index + 1][2] if index + 1 < len(spans) else ""
            if _is_name_word(bare, first_names) and following and _is_name_word(
                    re.sub(r"['’]s$", "", following), last_names):
                add(word_start, base + spans[index + 1][1], "first-last")
            elif _is_name_word(bare, first_names) and not _at_sentence_start(text, word_start):
                add(word_start, base + end, "first-name")
            elif (_is_name_word(bare, last_names) and not _at_sentence_start(text, word_start)
                  and not _eponym(text, base + end)):
                # A surname on its own, mid-sentence: could be a place, a drug, a gene.
                surnames.append((word_start, base + end))
    return findings, surnames


def scrub(text: str) -> ScrubResult:
    """Replace every identifier found with [KIND]; say when a human should look."""
    if not text:
        return ScrubResult(text=text)
    labelled, patterns = _compiled()
    findings: list[Finding] = []
    unsure: list[str] = []
    for kind, pattern in labelled:
        for match in pattern.finditer(text):
            findings.append(Finding(kind, match.start("value"), match.end("value"), "label"))
    for kind, pattern, group in patterns:
        for match in pattern.finditer(text):
            findings.append(Finding(kind, match.start(group), match.end(group), "pattern"))
    try:
        analyzer = _presidio()
        results = analyzer.analyze(text=text, language="en",
                                   entities=sorted(PRESIDIO_KINDS))
    except PhiGateUnavailable:
        raise
    except Exception as error:  # a broken recognizer must stop exports, not leak text
        raise PhiGateUnavailable(f"Presidio failed on a text: {error}") from error
    for result in results:
        kind = PRESIDIO_KINDS[result.entity_type]
        if result.score >= PRESIDIO_CONFIDENT:
            findings.append(Finding(kind, result.start, result.end, "presidio"))
        elif kind in UNSURE_KINDS and result.score >= 0.1 and not any(
                f.start <= result.start and result.end <= f.end for f in findings):
            unsure.append(f"a possible {kind.lower()} (Presidio {result.entity_type}, "
                          f"score {result.score:.2f})")
    name_findings, surnames = _name_findings(text)
    findings += name_findings
    for start, end in surnames:
        if not any(f.start <= start and end <= f.end for f in findings):
            unsure.append("a capitalised word that is a common surname")
    redacted = _apply(text, findings)
    if re.search(r"(?<![\d.,])\b\d{5}\b(?![.,]\d)", redacted):
        unsure.append("a bare five-digit number (a ZIP code?)")
    if "@" in redacted:
        unsure.append("an @ sign left in the text")
    return ScrubResult(text=redacted, findings=sorted(findings, key=lambda f: (f.start, f.end)),
                       unsure=sorted(set(unsure)))


def _apply(text: str, findings: list[Finding]) -> str:
    """Replace spans, merging overlaps; the longest span wins its label."""
    spans = sorted(((f.start, f.end, f.kind) for f in findings if f.end > f.start),
                   key=lambda span: (span[0], -(span[1] - span[0])))
    merged: list[list[Any]] = []
    for start, end, kind in spans:
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
            continue
        merged.append([start, end, kind])
    pieces = []
    cursor = 0
    for start, end, kind in merged:
        pieces.append(text[cursor:start])
        pieces.append(f"[{kind}]")
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)
