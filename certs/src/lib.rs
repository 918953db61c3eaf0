//! SPIFFE identities, rustls configs from Envoy TLS contexts, SAN matching, the Istio CA client and a dev CA.
