"""Device backends: where a token's keys live when not in the engine's own store.

base    the contract (Backend, KeyRef, Health, DeviceWorker deadlines, error mapping)
tpm2    TPM 2.0 via tpm2-pytss ESAPI (needs requirements-backends.txt)
piv     PIV smartcards over PC/SC via pyscard (apdu: ISO 7816-4 transport; rsapad: host-side
        RSA encodings for cards that only do raw RSA)

Nothing is imported here: tpm2 and piv need optional packages; import the module you use.
"""
