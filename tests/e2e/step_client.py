"""A long-lived PKCS#11 client for tests/e2e/test_two_processes.py, driven one step
at a time: one JSON command per line on stdin, one JSON answer per line on stdout,
{"rv": "CKR_...", "value": ...}. Objects are named by the test ("K", "copy", ...).

    python step_client.py MODULE USER_PIN
Commands (all but "quit" answer):
    make   kind=aes|ec name label id(hex)   a token key (ec: name is the private key,
                                            name+".pub" the public one)
    find   name id(hex) cls                 find the one object of class `cls` with CKA_ID
                                            id; value = how many were found
    get    name attrs=[...]                 C_GetAttributeValue; value {attr: value}
    set    name attr value                  C_SetAttributeValue of one attribute
    copy   name as attrs={...}              C_CopyObject
    destroy name                            C_DestroyObject
    use    use=encrypt|sign|wrap|derive name [with]
                                            C_EncryptInit+C_Encrypt, C_SignInit+C_Sign,
                                            C_WrapKey (name wraps `with`), C_DeriveKey (ECDH)
    list   id(hex)                          every object with CKA_ID id, as a fresh reader sees it
"""

import json
import sys

from p11_client import OK, Attribute, ObjectClass, aes_key, call, derive, ec_pair, encrypt, find, sign, token, wrap

SHOWN = ("CLASS", "LABEL", "ENCRYPT", "SIGN", "WRAP", "DERIVE", "UNIQUE_ID")


def plain(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ObjectClass):
        return value.name
    return value


class Client:
    def __init__(self, module: str, pin: str):
        self.session = token(module).open(user_pin=pin, rw=True)
        self.objs = {}
        self._peer = None

    def peer_point(self) -> bytes:
        """The EC point of a session key pair: the other party of the ECDH derivations."""
        if self._peer is None:
            pub, _ = ec_pair(self.session, "peer", b"peer", store=False)
            self._peer = pub[Attribute.EC_POINT]
        return self._peer

    def make(self, kind, name, label, id):
        if kind in ("aes", "kek"):
            self.objs[name] = aes_key(self.session, label, bytes.fromhex(id), wraps=kind == "kek")
        else:
            self.objs[name + ".pub"], self.objs[name] = ec_pair(self.session, label, bytes.fromhex(id))

    def find(self, name, id, cls):
        found = find(self.session, {Attribute.ID: bytes.fromhex(id), Attribute.CLASS: getattr(ObjectClass, cls)})
        if found:
            self.objs[name] = found[0]
        return len(found)

    def get(self, name, attrs):
        obj = self.objs[name]
        values = obj.get_attributes([getattr(Attribute, a) for a in attrs])
        return {a: plain(values[getattr(Attribute, a)]) for a in attrs}

    def set(self, name, attr, value):
        self.objs[name][getattr(Attribute, attr)] = value

    def copy(self, name, attrs, **kw):
        new = self.objs[name].copy({getattr(Attribute, k): v for k, v in attrs.items()})
        self.objs[kw["as"]] = new

    def destroy(self, name):
        self.objs[name].destroy()

    def use(self, use, name, **kw):
        key = self.objs[name]
        if use == "encrypt":
            return encrypt(self.session, key)
        if use == "sign":
            return sign(key)
        if use == "wrap":
            return wrap(key, self.objs[kw["with"]])
        if use == "derive":
            return derive(key, self.peer_point())
        raise ValueError(use)

    def list(self, id):
        out = []
        for obj in find(self.session, {Attribute.ID: bytes.fromhex(id)}):
            values = obj.get_attributes([getattr(Attribute, a) for a in SHOWN])
            out.append({a: plain(values.get(getattr(Attribute, a))) for a in SHOWN})
        return sorted(out, key=lambda o: (o["CLASS"], o["LABEL"], o["UNIQUE_ID"]))


def main():
    rv, client = call(Client, sys.argv[1], sys.argv[2])
    print(json.dumps({"rv": rv, "value": None}), flush=True)
    if rv != OK:
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        do = cmd.pop("do")
        if do == "quit":
            break
        rv, value = call(getattr(client, do), **cmd)
        print(json.dumps({"rv": rv, "value": value}), flush=True)
    client.session.close()


if __name__ == "__main__":
    main()
