package relay

import "net/http"

// message is an inbox request as read: its body, its signature (syntax,
// digest and date checked; not yet verified) and its activity.
type message struct {
	req   *http.Request
	body  []byte
	sig   inboundSignature
	keyID string
	env   *envelope
}
