"""Small PubMed XML documents written by the tests (the real DTD's element names)."""

from __future__ import annotations

import gzip
from pathlib import Path
from xml.sax.saxutils import escape


def article_xml(pmid: str, title: str, sections: list[tuple[str, str]], *, year: int = 2015,
                journal: str = "Journal of Tests", publication_types: tuple[str, ...] = (
                    "Journal Article",), mesh: tuple[str, ...] = (), language: str = "eng"
                ) -> str:
    abstract = "".join(
        f'<AbstractText Label="{escape(label)}">{escape(text)}</AbstractText>' if label
        else f"<AbstractText>{escape(text)}</AbstractText>" for label, text in sections)
    types = "".join(f"<PublicationType>{escape(t)}</PublicationType>" for t in publication_types)
    headings = "".join(f"<MeshHeading><DescriptorName>{escape(m)}</DescriptorName></MeshHeading>"
                       for m in mesh)
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">'
        f'<PMID Version="1">{pmid}</PMID><Article PubModel="Print">'
        f"<Journal><JournalIssue><PubDate><Year>{year}</Year></PubDate></JournalIssue>"
        f"<Title>{escape(journal)}</Title></Journal>"
        f"<ArticleTitle>{escape(title)}</ArticleTitle>"
        + (f"<Abstract>{abstract}</Abstract>" if sections else "")
        + f"<Language>{language}</Language>"
        f"<PublicationTypeList>{types}</PublicationTypeList></Article>"
        f"<MeshHeadingList>{headings}</MeshHeadingList></MedlineCitation></PubmedArticle>"
    )


def delete_xml(*pmids: str) -> str:
    return "<DeleteCitation>" + "".join(f'<PMID Version="1">{p}</PMID>' for p in pmids) + \
        "</DeleteCitation>"


def document(*records: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<PubmedArticleSet>\n'
            + "\n".join(records) + "\n</PubmedArticleSet>\n").encode("utf-8")


def write(path: Path, content: bytes) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


ASTHMA = article_xml(
    "1001", "Budesonide-formoterol as needed in mild asthma",
    [("BACKGROUND", "Patients with mild asthma often rely on short-acting bronchodilators."),
     ("METHODS", "We randomised 3800 adolescents and adults with mild asthma to as-needed "
                 "budesonide-formoterol or twice-daily budesonide maintenance."),
     ("RESULTS", "Severe exacerbations were similar while inhaled glucocorticoid exposure "
                 "was lower with the as-needed combination inhaler."),
     ("CONCLUSIONS", "As-needed budesonide-formoterol was noninferior for severe asthma "
                     "exacerbations.")],
    year=2018, publication_types=("Journal Article", "Randomized Controlled Trial"),
    mesh=("Asthma", "Budesonide"))
STROKE = article_xml(
    "1002", "Thrombectomy six to twenty-four hours after ischemic stroke",
    [("OBJECTIVE", "To test mechanical thrombectomy in patients with large-vessel occlusion "
                   "presenting late after stroke onset."),
     ("RESULTS", "Functional independence at ninety days was more frequent after "
                 "thrombectomy than after standard care alone.")],
    year=2018, publication_types=("Journal Article", "Randomized Controlled Trial"))
SEPSIS_RETRACTED = article_xml(
    "1003", "Vitamin C infusion cures septic shock",
    [("", "In a small cohort, intravenous vitamin C, hydrocortisone and thiamine were "
          "associated with lower mortality from septic shock.")],
    year=2017, publication_types=("Journal Article", "Retracted Publication"))
DIABETES_OLD = article_xml(
    "1004", "Metformin and lactic acidosis in type 2 diabetes",
    [("", "We reviewed cases of lactic acidosis among patients with type 2 diabetes treated "
          "with metformin and found the risk to be very low.")],
    year=1995, publication_types=("Journal Article", "Review"))
NO_ABSTRACT = article_xml("1005", "Letter: a comment on anticoagulation", [])
