// Java SunPKCS11 conformance checks, run by conformance/test_java.py.
// Usage: java Conformance <sunpkcs11.cfg> <pin> <aes-key-label>
// Prints one line per check: "PASS <name>", "FAIL <name> <exception>" or "SKIP <name> <why>".
import java.security.*;
import java.security.cert.Certificate;
import java.security.cert.X509Certificate;
import java.security.spec.*;
import java.util.*;
import java.util.concurrent.*;
import javax.crypto.*;
import javax.crypto.spec.GCMParameterSpec;
import sun.security.tools.keytool.CertAndKeyGen;
import sun.security.x509.X500Name;

public class Conformance {
    static Provider p;
    static char[] pin;
    static KeyStore ks;
    static final Map<String, KeyPair> pairs = new HashMap<>();

    interface Check { void run() throws Exception; }

    static void check(String name, Check c) {
        try {
            c.run();
            System.out.println("PASS " + name);
        } catch (Throwable t) {
            Throwable root = t;
            while (root.getCause() != null) root = root.getCause();
            System.out.println("FAIL " + name + " " + t + (root != t ? " <- " + root : ""));
        }
        System.out.flush();
    }

    static void require(boolean ok, String what) {
        if (!ok) throw new IllegalStateException(what);
    }

    // sign with the token, verify with the JDK's own software provider
    static void signVerify(String alg, KeyPair kp, AlgorithmParameterSpec spec) throws Exception {
        byte[] data = new byte[1000];
        new SecureRandom().nextBytes(data);
        Signature s = Signature.getInstance(alg, p);
        if (spec != null) s.setParameter(spec);
        s.initSign(kp.getPrivate());
        s.update(data);
        byte[] sig = s.sign();
        Signature v = Signature.getInstance(alg);
        if (spec != null) v.setParameter(spec);
        v.initVerify(softPublic(kp.getPublic()));
        v.update(data);
        require(v.verify(sig), alg + " signature did not verify in software");
        Signature tv = Signature.getInstance(alg, p);  // and on the token
        if (spec != null) tv.setParameter(spec);
        tv.initVerify(kp.getPublic());
        tv.update(data);
        require(tv.verify(sig), alg + " signature did not verify on the token");
    }

    static PublicKey softPublic(PublicKey k) throws Exception {
        return KeyFactory.getInstance(k.getAlgorithm().equals("EC") ? "EC" : "RSA")
                .generatePublic(new X509EncodedKeySpec(k.getEncoded()));
    }

    public static void main(String[] args) throws Exception {
        pin = args[1].toCharArray();
        String aesLabel = args[2];
        check("provider_configure", () -> {
            p = Security.getProvider("SunPKCS11").configure(args[0]);
            Security.addProvider(p);
        });
        if (p == null) return;
        check("keystore_load", () -> {
            ks = KeyStore.getInstance("PKCS11", p);
            ks.load(null, pin);
            System.out.println("INFO aliases " + Collections.list(ks.aliases()));
        });
        if (ks == null) return;
        check("ec_keypair", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("EC", p);
            g.initialize(new ECGenParameterSpec("secp256r1"));
            pairs.put("EC", g.generateKeyPair());
        });
        check("rsa_keypair", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("RSA", p);
            g.initialize(2048);
            pairs.put("RSA", g.generateKeyPair());
        });
        check("sha256_ecdsa", () -> signVerify("SHA256withECDSA", pairs.get("EC"), null));
        check("sha256_rsa", () -> signVerify("SHA256withRSA", pairs.get("RSA"), null));
        check("rsassa_pss", () -> signVerify("RSASSA-PSS", pairs.get("RSA"),
                new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1)));
        check("aes_gcm_token_key", () -> {
            Key key = ks.getKey(aesLabel, null);
            require(key instanceof SecretKey, "token AES key '" + aesLabel + "' not in KeyStore");
            byte[] iv = new byte[12], aad = "header".getBytes(), plain = new byte[333];
            new SecureRandom().nextBytes(iv);
            new SecureRandom().nextBytes(plain);
            Cipher c = Cipher.getInstance("AES/GCM/NoPadding", p);
            c.init(Cipher.ENCRYPT_MODE, key, new GCMParameterSpec(128, iv));
            c.updateAAD(aad);
            byte[] ct = c.doFinal(plain);
            require(ct.length == plain.length + 16, "ciphertext length " + ct.length);
            c.init(Cipher.DECRYPT_MODE, key, new GCMParameterSpec(128, iv));
            c.updateAAD(aad);
            require(Arrays.equals(c.doFinal(ct), plain), "GCM round trip differs");
            ct[0] ^= 1;
            c.init(Cipher.DECRYPT_MODE, key, new GCMParameterSpec(128, iv));
            c.updateAAD(aad);
            try {
                c.doFinal(ct);
                throw new IllegalStateException("tampered GCM ciphertext decrypted");
            } catch (AEADBadTagException expected) { /* ok */ }
        });
        check("certificate_entry", () -> {
            CertAndKeyGen gen = new CertAndKeyGen("EC", "SHA256withECDSA", p.getName());
            gen.generate("secp256r1");
            X509Certificate cert = gen.getSelfCertificate(new X500Name("CN=java conformance"),
                    86400L * 7);
            cert.verify(cert.getPublicKey());
            ks.setKeyEntry("java-ec", gen.getPrivateKey(), null, new Certificate[]{cert});
            KeyStore again = KeyStore.getInstance("PKCS11", p);
            again.load(null, pin);
            List<String> aliases = Collections.list(again.aliases());
            require(aliases.contains("java-ec"), "stored entry not listed: " + aliases);
            require(again.isKeyEntry("java-ec"), "java-ec is not a key entry");
            require(again.getCertificate("java-ec").equals(cert), "certificate differs");
            PrivateKey k = (PrivateKey) again.getKey("java-ec", null);
            signVerify("SHA256withECDSA", new KeyPair(cert.getPublicKey(), k), null);
        });
        check("threads_sign_loop", () -> {
            KeyPair kp = pairs.get("EC");
            ExecutorService ex = Executors.newFixedThreadPool(4);
            List<Future<Integer>> fs = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                fs.add(ex.submit(() -> {
                    Signature v = Signature.getInstance("SHA256withECDSA");
                    PublicKey pub = softPublic(kp.getPublic());
                    int ok = 0;
                    for (int i = 0; i < 50; i++) {
                        byte[] d = ("thread message " + i).getBytes();
                        Signature s = Signature.getInstance("SHA256withECDSA", p);
                        s.initSign(kp.getPrivate());
                        s.update(d);
                        byte[] sig = s.sign();
                        v.initVerify(pub);
                        v.update(d);
                        if (v.verify(sig)) ok++;
                    }
                    return ok;
                }));
            }
            int total = 0;
            for (Future<Integer> f : fs) total += f.get(120, TimeUnit.SECONDS);
            ex.shutdown();
            require(total == 200, "verified " + total + " of 200 signatures");
        });
    }
}
