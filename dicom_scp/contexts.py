"""What the node accepts: storage SOP classes and transfer syntaxes, in one place.

The conformance statement (and its test) is built from this module. The node
accepts every transfer syntax below *as sent*: the acceptor picks the first
syntax in the requestor's proposal that is listed here, and the dataset is
written to the spool exactly as it arrived, never transcoded.

Private or unknown storage SOP classes are not accepted: pynetdicom can only
serve them through its process-wide ``_config.UNRESTRICTED_STORAGE_SERVICE``
switch (which also accepts any transfer syntax), so their presentation
contexts are rejected at association negotiation (abstract syntax not
supported) and the sender reports that. Chest radiographs never use them.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Transfer syntaxes accepted for every storage SOP class, in order of preference
#: (the uncompressed ones first, as the standard's default is Implicit VR LE).
SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    RLE_LOSSLESS,
)

#: Transfer syntaxes of the Verification SOP Class (C-ECHO).
VERIFICATION_TRANSFER_SYNTAXES: tuple[str, ...] = (
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

VERIFICATION_SOP_CLASS: str = str(Verification)


def storage_sop_classes() -> tuple[str, ...]:
    """Return every storage SOP Class UID the node accepts as an SCP.

    These are all the storage SOP classes pynetdicom knows
    (``AllStoragePresentationContexts``), in its order, without duplicates.

    Returns
    -------
    tuple of str
        SOP Class UIDs.
    """
    seen: dict[str, None] = {}
    for context in AllStoragePresentationContexts:
        seen.setdefault(str(context.abstract_syntax), None)
    return tuple(seen)


def supported_contexts() -> list[PresentationContext]:
    """Build the presentation contexts the node accepts as an SCP.

    Returns
    -------
    list of PresentationContext
        Verification with the uncompressed syntaxes, then one context per storage
        SOP class with :data:`SUPPORTED_TRANSFER_SYNTAXES`.
    """
    contexts: list[PresentationContext] = []
    for abstract_syntax, syntaxes in [
        (VERIFICATION_SOP_CLASS, VERIFICATION_TRANSFER_SYNTAXES),
        *((uid, SUPPORTED_TRANSFER_SYNTAXES) for uid in storage_sop_classes()),
    ]:
        context = PresentationContext()
        context.abstract_syntax = UID(abstract_syntax)
        context.transfer_syntax = [UID(ts) for ts in syntaxes]
        contexts.append(context)
    return contexts
