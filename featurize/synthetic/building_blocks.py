"""The built-in chemistry of the generated panel and screening library.

Real, commercially common reagents (the kind every medicinal-chemistry
building-block catalogue lists) and five workhorse reactions of library
synthesis, written as reaction SMARTS for RDKit's rdChemReactions:

- amide coupling (carboxylic acid + primary/secondary amine),
- sulfonamide formation (sulfonyl chloride + amine),
- urea formation (isocyanate + amine),
- reductive amination (aldehyde + amine),
- Suzuki-Miyaura coupling (aryl bromide + boronic acid).

Bifunctional building blocks (bromo-acids, bromo-amines, amino acids) carry
two handles, so routes chain two or three reactions: the routes in
:data:`ROUTES` are what the enumerator in featurize/synthetic/enumeration.py combines.
Each reagent has exactly one site for each reaction it takes part in (the
enumerator checks this and names any reagent that breaks it).
"""
from __future__ import annotations

from dataclasses import dataclass

# Reaction SMARTS: reactant 0 is the electrophile or the aryl bromide, reactant
# 1 the amine or the boronic acid. Amines exclude amide, sulfonamide, urea and
# aromatic nitrogens, so only a real N-H of a basic or aniline nitrogen reacts.
_AMINE = "[NX3;H2,H1;!$(N[C,S]=[O,S,N]);!a:3]"
REACTIONS: dict[str, str] = {
    "amide": f"[CX3:1](=[O:2])[OX2H1].{_AMINE}>>[C:1](=[O:2])[N:3]",
    "sulfonamide": f"[SX4:1](=[O:2])(=[O:4])[Cl].{_AMINE}>>[S:1](=[O:2])(=[O:4])[N:3]",
    "urea": f"[NX2:5]=[CX2:1]=[O:2].{_AMINE}>>[N:5][C:1](=[O:2])[N:3]",
    "reductive_amination": f"[CX3H1:1](=[O])[#6:4].{_AMINE}>>[CH2:1]([#6:4])[N:3]",
    "suzuki": "[c:1][Br].[c:2][BX3]([OX2H1])[OX2H1]>>[c:1]-[c:2]",
}


@dataclass(frozen=True)
class Handle:
    """One reactive site of a reagent: reaction name and its reactant position."""

    reaction: str
    position: int


ACID = Handle("amide", 0)
SULFONYL_CHLORIDE = Handle("sulfonamide", 0)
ISOCYANATE = Handle("urea", 0)
ALDEHYDE = Handle("reductive_amination", 0)
ARYL_BROMIDE = Handle("suzuki", 0)
BORONIC_ACID = Handle("suzuki", 1)

# --- reagents with one handle ---------------------------------------------

ACIDS = (
    "OC(=O)c1ccccc1", "OC(=O)c1ccc(F)cc1", "OC(=O)c1cccc(Cl)c1", "COc1ccc(C(=O)O)cc1",
    "OC(=O)c1ccco1", "OC(=O)c1cccs1", "OC(=O)c1cccnc1", "OC(=O)c1ccncc1", "OC(=O)c1ccccn1",
    "OC(=O)C1CC1", "OC(=O)C1CCCCC1", "OC(=O)Cc1ccccc1", "OC(=O)Cc1ccc(Cl)cc1",
    "OC(=O)CCc1ccccc1", "OC(=O)Cc1c[nH]c2ccccc12", "Cn1cc(C(=O)O)cn1", "Cc1cc(C(=O)O)no1",
    "OC(=O)c1cnc2ccccc2c1", "OC(=O)c1ccc2ccccc2c1", "OC(=O)c1cc2ccccc2o1",
    "OC(=O)c1ccc(C(F)(F)F)cc1", "N#Cc1cccc(C(=O)O)c1", "CC(=O)Nc1ccc(C(=O)O)cc1",
    "OC(=O)C1CCCO1", "OC(=O)C1CCOCC1", "OC(=O)Cc1cccs1", "Cc1ncsc1C(=O)O",
    "OC(=O)/C=C/c1ccccc1", "OC(=O)c1ccc(Cl)cc1Cl", "COc1ccc(C(=O)O)cc1OC", "OC(=O)c1cnccn1",
    "OC(=O)c1ccc(Cl)nc1", "CN(C)c1ccc(C(=O)O)cc1", "OC(=O)c1cc2ccccc2[nH]1",
    "CC(C)(C)OC(=O)N1CCC(C(=O)O)CC1", "OC(=O)C1CC1c1ccccc1", "OC(=O)c1ccc2c(c1)OCO2",
    "OC(=O)COc1ccccc1", "OC(=O)c1cc(F)cc(F)c1", "CC(=O)CCC(=O)O", "OC(=O)c1ccc(-n2cccn2)cc1",
    "OC(=O)c1csc(C)n1",
    "OC(=O)c1ccccc1F", "Cc1ccc(C(=O)O)cc1", "OC(=O)c1ccc(O)cc1", "CC(C)C(=O)O", "OC(=O)C1CCC1",
    "OC(=O)c1cccc2ccccc12", "CS(=O)(=O)c1ccc(C(=O)O)cc1", "OC(=O)Cn1ccnc1", "OC(=O)CN1CCOCC1",
    "Cn1cc(C(=O)O)c2ccccc21", "OC(=O)c1ccnc(Cl)c1", "OC(=O)c1ccsc1", "COc1cccc(C(=O)O)c1",
)

AMINES = (
    "NCc1ccccc1", "NCc1ccc(F)cc1", "COc1ccc(CN)cc1", "NCCc1ccccc1", "Nc1ccccc1",
    "Nc1ccc(F)cc1", "Nc1cccc(Cl)c1", "COc1ccc(N)cc1", "C1COCCN1", "C1CCNCC1",
    "CN1CCNCC1", "C1CCNC1", "NC1CCCCC1", "NC1CC1", "NCc1ccco1", "NCc1cccs1",
    "c1ccc(N2CCNCC2)cc1", "c1cnc(N2CCNCC2)nc1", "c1ccc(CC2CCNCC2)cc1", "c1ccc2c(c1)CCNC2",
    "c1ccc2c(c1)CCN2", "CNCc1ccccc1", "Nc1nccs1", "Nc1ccccn1", "Nc1cccnc1", "NC1CCOCC1",
    "NCCCN1CCOCC1", "COCCN", "OC1CCNCC1", "NC(=O)C1CCNCC1", "C1CSCCN1", "C1CCCNCC1",
    "FC1(F)CCNCC1", "C[C@H](N)c1ccccc1", "Fc1ccc(N2CCNCC2)cc1", "Nc1nc2ccccc2s1",
    "N#Cc1ccc(N)cc1", "Nc1cccc(C(F)(F)F)c1", "NCCc1c[nH]c2ccccc12", "COc1ccc(CCN)cc1",
    "CC(C)N", "NCc1ccncc1", "NCc1cccnc1", "Cn1cc(CN)cn1", "NCC1CCCO1", "CC1CCCCN1",
    "C1CC(c2ccccc2)CN1", "NCC(F)(F)F", "CNC1CCCCC1", "Nc1ccc2OCOc2c1", "Nc1cnn(C)c1",
    "NCCN1CCCC1", "COc1cccc(N)c1", "Cc1cc(N)no1", "NC1CCN(C(=O)OC(C)(C)C)CC1",
    "NCc1ccc(Cl)cc1", "NCc1ccc(C(F)(F)F)cc1", "Nc1ccc(Cl)cc1", "Cc1ccc(N)cc1", "CNc1ccccc1",
    "NC1CCCC1", "NCC1CC1", "C1CC2(CCN1)OCCO2", "CC1CNCC(C)O1", "OCC1CCCN1", "NCc1ccc2c(c1)OCO2",
    "Nc1ccc(N2CCOCC2)cc1", "NCCOc1ccccc1", "Nc1cc(F)cc(F)c1", "COc1cccc(CN)c1",
    "FC(F)(F)C1CCNCC1", "c1ccc(OC2CCNCC2)cc1", "NCc1ccccn1", "Nc1ccc2[nH]ncc2c1",
    "COC(=O)C1CCNCC1",
)

SULFONYL_CHLORIDES = (
    "O=S(=O)(Cl)c1ccccc1", "Cc1ccc(S(=O)(=O)Cl)cc1", "O=S(=O)(Cl)c1ccc(F)cc1",
    "COc1ccc(S(=O)(=O)Cl)cc1", "O=S(=O)(Cl)c1ccc(Cl)cc1", "CS(=O)(=O)Cl",
    "O=S(=O)(Cl)c1cccs1", "O=S(=O)(Cl)c1ccc2ccccc2c1", "CC(=O)Nc1ccc(S(=O)(=O)Cl)cc1",
    "Cn1cnc(S(=O)(=O)Cl)c1", "O=S(=O)(Cl)c1cccc(C(F)(F)F)c1", "N#Cc1ccc(S(=O)(=O)Cl)cc1",
    "O=S(=O)(Cl)C1CC1", "O=S(=O)(Cl)c1ccc(F)cc1F", "Cc1noc(C)c1S(=O)(=O)Cl",
    "O=S(=O)(Cl)c1cccnc1", "CC(C)(C)c1ccc(S(=O)(=O)Cl)cc1", "CN(C)c1cccc2c(S(=O)(=O)Cl)cccc12",
    "CCS(=O)(=O)Cl", "O=S(=O)(Cl)Cc1ccccc1",
)

ISOCYANATES = (
    "O=C=Nc1ccccc1", "O=C=Nc1ccc(F)cc1", "O=C=Nc1ccc(Cl)cc1", "COc1ccc(N=C=O)cc1",
    "O=C=Nc1cccc(Cl)c1", "O=C=Nc1ccc(C(F)(F)F)cc1", "O=C=NCc1ccccc1", "O=C=NC1CCCCC1",
    "CC(C)N=C=O", "COc1cccc(N=C=O)c1", "Cc1ccccc1N=C=O", "Cc1ccc(N=C=O)cc1",
    "O=C=Nc1ccc(Cl)c(Cl)c1", "CCN=C=O", "N#Cc1ccc(N=C=O)cc1",
)

ALDEHYDES = (
    "O=Cc1ccccc1", "O=Cc1ccc(F)cc1", "COc1ccc(C=O)cc1", "O=Cc1ccc(Cl)cc1", "O=Cc1cccnc1",
    "O=Cc1ccco1", "O=Cc1cccs1", "CN(C)c1ccc(C=O)cc1", "O=CC1CCCCC1", "Cn1ccnc1C=O",
    "O=Cc1c[nH]c2ccccc12", "N#Cc1ccc(C=O)cc1", "O=Cc1ccc2ccccc2c1", "O=Cc1ccc2c(c1)OCO2",
    "O=Cc1ccc(C(F)(F)F)cc1", "O=Cc1ccnc2ccccc12", "Cc1ccc(C=O)o1", "O=Cc1ccncc1",
    "COc1ccccc1C=O", "O=Cc1nccs1", "CC(C)C=O", "O=Cc1cccc(O)c1",
)

ARYL_BROMIDES = (
    "Brc1ccccc1", "COc1ccc(Br)cc1", "Cc1ccc(Br)cc1", "Fc1ccc(Br)cc1", "N#Cc1ccc(Br)cc1",
    "Brc1cccnc1", "Brc1ccccn1", "Brc1cncnc1", "Brc1cccs1", "Brc1ccsc1", "Cn1cc(Br)cn1",
    "Brc1ccc2[nH]ccc2c1", "Brc1ccc2ncccc2c1", "Brc1ccc2ccccc2c1", "FC(F)(F)c1ccc(Br)cc1",
    "COc1cccc(Br)c1", "Cc1cc(C)cc(Br)c1", "CN(C)c1ccc(Br)cc1", "Brc1nccs1",
    "COc1ccc(Br)cn1", "CC(=O)c1ccc(Br)cc1", "COC(=O)c1ccc(Br)cc1", "CS(=O)(=O)c1ccc(Br)cc1",
    "Brc1ccc2occc2c1", "Clc1ccc(Br)cc1", "Brc1ccc2c(c1)OCO2", "Fc1ccc(Br)c(F)c1",
)

BORONIC_ACIDS = (
    "OB(O)c1ccccc1", "COc1ccc(B(O)O)cc1", "OB(O)c1ccc(F)cc1", "OB(O)c1cccc(Cl)c1",
    "OB(O)c1ccc(C(F)(F)F)cc1", "OB(O)c1cccnc1", "OB(O)c1ccncc1", "OB(O)c1cccs1",
    "OB(O)c1ccsc1", "OB(O)c1ccco1", "OB(O)c1ccoc1", "Cn1cc(B(O)O)cn1", "Cc1ccc(B(O)O)cc1",
    "COc1ccc(B(O)O)cc1OC", "CC(=O)c1ccc(B(O)O)cc1", "N#Cc1ccc(B(O)O)cc1",
    "OB(O)c1ccc2ccccc2c1", "OB(O)c1cc2ccccc2o1", "COc1ccc(B(O)O)cn1",
    "CS(=O)(=O)c1ccc(B(O)O)cc1", "OB(O)c1ccc(O)cc1", "OB(O)c1ccc2[nH]ccc2c1",
    "OB(O)c1cnc2ccccc2c1", "OB(O)c1cncnc1", "OB(O)c1ccc(N2CCOCC2)cc1", "Cc1noc(C)c1B(O)O",
    "OB(O)c1cccc(C#N)c1", "CN(C)c1ccc(B(O)O)cc1",
    "Cc1ccccc1B(O)O", "OB(O)c1ccc(Cl)cc1", "COc1cccc(B(O)O)c1", "OB(O)c1ccc2c(c1)OCO2",
    "CN(C)C(=O)c1ccc(B(O)O)cc1", "Cc1ncc(B(O)O)cn1",
)

# --- bifunctional cores ------------------------------------------------------

BROMO_ACIDS = (
    "OC(=O)c1ccc(Br)cc1", "OC(=O)c1cccc(Br)c1", "OC(=O)c1cncc(Br)c1", "OC(=O)c1ccc(Br)nc1",
    "OC(=O)c1ccc(Br)s1", "OC(=O)c1ccc(Br)o1", "OC(=O)Cc1ccc(Br)cc1", "OC(=O)Cc1cccc(Br)c1",
    "Cc1cc(C(=O)O)ccc1Br", "OC(=O)c1ccc(Br)cc1F", "OC(=O)c1cc2cc(Br)ccc2[nH]1",
    "OC(=O)c1ccc2cc(Br)ccc2c1", "OC(=O)c1csc(Br)n1", "OC(=O)CCc1ccc(Br)cc1",
    "OC(=O)c1cc(Br)cs1", "OC(=O)c1ccc(Br)c(F)c1", "Cn1cc(Br)cc1C(=O)O", "OC(=O)c1ccc(Br)cn1",
)

BROMO_AMINES = (
    "Nc1ccc(Br)cc1", "Nc1cccc(Br)c1", "NCc1ccc(Br)cc1", "NCc1cccc(Br)c1",
    "Brc1ccc(N2CCNCC2)cc1", "NCCc1ccc(Br)cc1", "Nc1ccc(Br)cn1", "Nc1ncc(Br)cn1",
    "Nc1ccc(Br)cc1F", "Brc1ccc2c(c1)CCNC2", "Brc1ccc2c(c1)CCN2", "Brc1ccc(C2CCNCC2)cc1",
    "NCc1ccc(Br)s1", "CNCc1ccc(Br)cc1",
    "Cc1ccc(Br)cc1N", "Brc1ccc(CN2CCNCC2)cc1", "NCc1cncc(Br)c1",
)

AMINO_ACIDS = (
    "Nc1ccc(C(=O)O)cc1", "Nc1cccc(C(=O)O)c1", "NCc1ccc(C(=O)O)cc1", "OC(=O)C1CCNCC1",
    "OC(=O)C1CCCNC1", "OC(=O)[C@@H]1CCCN1", "Nc1ccc(CC(=O)O)cc1", "Nc1ccc(C(=O)O)cn1",
    "Cc1ccc(C(=O)O)cc1N", "N[C@H]1CC[C@H](C(=O)O)CC1", "OC(=O)c1ccc(N2CCNCC2)cc1",
    "NCc1cccc(C(=O)O)c1", "OC(=O)C1CNC1", "OC(=O)c1ccc2c(c1)CCNC2",
    "NCCC(=O)O", "OC(=O)CN1CCNCC1", "Nc1cc(C(=O)O)ccc1F", "NCCCC(=O)O", "OC(=O)C1CCNC1",
)

#: Reagents that cap an amine: (component name, reagents, handle).
CAPS: tuple[tuple[str, tuple[str, ...], Handle], ...] = (
    ("acid", ACIDS, ACID),
    ("sulfonyl_chloride", SULFONYL_CHLORIDES, SULFONYL_CHLORIDE),
    ("isocyanate", ISOCYANATES, ISOCYANATE),
    ("aldehyde", ALDEHYDES, ALDEHYDE),
)


@dataclass(frozen=True)
class Component:
    """A reagent set in a route: the reagents and the handle toward the next component.

    The handle toward the previous component is the partner of the previous
    component's ``next_handle``.
    """

    name: str
    reagents: tuple[str, ...]
    next_handle: Handle | None = None


@dataclass(frozen=True)
class Route:
    """A linear synthesis route: components joined by one reaction each.

    Component k reacts through ``components[k].next_handle`` with component
    k + 1, which takes the other reactant position of that reaction.
    """

    components: tuple[Component, ...]

    @property
    def name(self) -> str:
        return "-".join(component.name for component in self.components)


def _amine_cap_routes() -> list[Route]:
    """Routes ending in an amine capped by an acid, sulfonyl chloride, isocyanate or aldehyde."""
    routes = []
    for cap_name, reagents, cap in CAPS:
        amine_side = Handle(cap.reaction, 1)
        routes += [
            Route((Component(cap_name, reagents, cap), Component("amine", AMINES))),
            Route((Component("boronic_acid", BORONIC_ACIDS, BORONIC_ACID),
                   Component("bromo_amine", BROMO_AMINES, amine_side),
                   Component(cap_name, reagents))),
            Route((Component(cap_name, reagents, cap),
                   Component("amino_acid", AMINO_ACIDS, ACID),
                   Component("amine", AMINES))),
            Route((Component(cap_name, reagents, cap),
                   Component("amino_acid", AMINO_ACIDS, ACID),
                   Component("bromo_amine", BROMO_AMINES, ARYL_BROMIDE),
                   Component("boronic_acid", BORONIC_ACIDS))),
        ]
    return routes


#: Every route the enumerator combines. Products heavier than the route
#: space's molecular-weight limit are left out by the enumerator.
ROUTES: tuple[Route, ...] = (
    Route((Component("aryl_bromide", ARYL_BROMIDES, ARYL_BROMIDE),
           Component("boronic_acid", BORONIC_ACIDS))),
    Route((Component("boronic_acid", BORONIC_ACIDS, BORONIC_ACID),
           Component("bromo_acid", BROMO_ACIDS, ACID),
           Component("amine", AMINES))),
    Route((Component("boronic_acid", BORONIC_ACIDS, BORONIC_ACID),
           Component("bromo_acid", BROMO_ACIDS, ACID),
           Component("amino_acid", AMINO_ACIDS, ACID),
           Component("amine", AMINES))),
    *_amine_cap_routes(),
)
