package relay

import "context"

// PutTopicFollower stores a follow of a topic as if its Follow had been
// accepted (benchmarks add thousands without exchanging Follows).
func PutTopicFollower(ctx context.Context, r *Relay, f TopicFollower) error {
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	return r.saveTopicFollower(ctx, f.Topic, f.Actor, &f)
}
