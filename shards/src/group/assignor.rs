//! Server-side partition assignors for consumer groups.
//!
//! In ringmq the group coordinator, not an elected client leader, decides
//! which member consumes which partition. Three strategies are offered:
//!
//! * [`Assignor::Range`] and [`Assignor::RoundRobin`] reproduce Kafka's
//!   `RangeAssignor` and `RoundRobinAssignor`, so operators who know those get
//!   no surprises.
//! * [`Assignor::Sticky`] (the default) balances load and, across
//!   generations, moves as few partitions as it can: every move costs the
//!   consumers a revoke, an offset commit and a cold cache.
//!
//! All three are pure functions of their inputs. Members are ranked by id and
//! partitions by `(topic, partition)` before anything else happens, so a
//! restarted coordinator (or a test) recomputes exactly the same answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ringmq_wire::group_api::Assignor;

/// One member's input: which topics it subscribes to (any order, may repeat
/// or name unknown topics).
pub struct MemberInput<'a> {
    pub member_id: &'a str,
    pub topics: &'a [String],
    /// Partitions this member owned in the previous generation (for sticky);
    /// may include partitions that no longer exist or topics it no longer
    /// subscribes to.
    pub previous: &'a [(String, u32)],
}

/// Result: member_id -> its partitions, sorted by (topic, partition). Every
/// member in the input appears as a key (possibly with an empty Vec).
pub type Assignment = BTreeMap<String, Vec<(String, u32)>>;

/// Assigns every partition of every subscribed topic to exactly one member
/// subscribed to it.
///
/// `partition_counts`: topic -> number of partitions for topics that exist;
/// topics absent from it are ignored. Inputs that repeat a member id are
/// folded into one member (union of topics and of previous partitions),
/// since the result can only hold one entry per id.
pub fn assign(
    assignor: Assignor,
    members: &[MemberInput<'_>],
    partition_counts: &BTreeMap<String, u32>,
) -> Assignment {
    let model = Model::new(members, partition_counts);
    let owners = match assignor {
        Assignor::Range => range(&model),
        Assignor::RoundRobin => round_robin(&model),
        Assignor::Sticky => sticky(&model),
    };
    let assignment = model.to_assignment(&owners);
    debug_assert_eq!(
        check_assignment(&assignment, members, partition_counts),
        Ok(())
    );
    assignment
}

// ---------------------------------------------------------------------------
// Normalised inputs
// ---------------------------------------------------------------------------

/// The inputs normalised once into dense indices in a canonical order, with
/// everything that cannot be assigned (unknown or empty topics, stale claims)
/// already dropped, so the assignors only deal with valid data.
struct Model<'a> {
    /// Distinct member ids, ascending; a member's index is its rank here.
    members: Vec<&'a str>,
    /// Topics that exist, have partitions and have a subscriber, by name.
    topics: Vec<Topic<'a>>,
    /// Every partition to assign as `(topic index, partition)`, ascending.
    /// A partition's position in this list is its id.
    partitions: Vec<(usize, u32)>,
    /// Per partition id, the one member whose claim on it from the previous
    /// generation is still valid.
    previous: Vec<Option<usize>>,
}

struct Topic<'a> {
    name: &'a str,
    /// Indices of the members subscribed to the topic, ascending; never empty.
    subscribers: Vec<usize>,
    /// Id of partition 0; a topic's partitions have consecutive ids.
    first_id: usize,
    count: u32,
}

/// One member's input with repeated member ids folded together.
#[derive(Default)]
struct Merged<'a> {
    topics: BTreeSet<&'a str>,
    previous: Vec<&'a (String, u32)>,
}

impl<'a> Model<'a> {
    fn new(inputs: &[MemberInput<'a>], partition_counts: &BTreeMap<String, u32>) -> Self {
        let merged = merge_members(inputs);
        let topics = collect_topics(&merged, partition_counts);
        let partitions: Vec<(usize, u32)> = topics
            .iter()
            .enumerate()
            .flat_map(|(t, topic)| (0..topic.count).map(move |p| (t, p)))
            .collect();
        let previous = valid_claims(&merged, &topics, partitions.len());
        Model {
            members: merged.keys().copied().collect(),
            topics,
            partitions,
            previous,
        }
    }

    fn topic_of(&self, partition_id: usize) -> usize {
        self.partitions[partition_id].0
    }

    /// Turns one owner per partition id into the public result. Partition
    /// ids ascend by (topic name, partition), so each list comes out sorted.
    fn to_assignment(&self, owners: &[usize]) -> Assignment {
        assert_eq!(owners.len(), self.partitions.len());
        let mut lists = vec![Vec::new(); self.members.len()];
        for (&(topic, partition), &owner) in self.partitions.iter().zip(owners) {
            lists[owner].push((self.topics[topic].name.to_owned(), partition));
        }
        self.members
            .iter()
            .map(|id| id.to_string())
            .zip(lists)
            .collect()
    }
}

fn merge_members<'a>(inputs: &[MemberInput<'a>]) -> BTreeMap<&'a str, Merged<'a>> {
    let mut merged: BTreeMap<&str, Merged> = BTreeMap::new();
    for input in inputs {
        let entry = merged.entry(input.member_id).or_default();
        entry.topics.extend(input.topics.iter().map(String::as_str));
        entry.previous.extend(input.previous.iter());
    }
    merged
}

/// The topics worth assigning: known to `partition_counts`, with at least
/// one partition and at least one subscriber. Subscriber lists come out
/// ascending because members are visited in id order.
fn collect_topics<'a>(
    merged: &BTreeMap<&'a str, Merged<'a>>,
    partition_counts: &BTreeMap<String, u32>,
) -> Vec<Topic<'a>> {
    let mut found: BTreeMap<&str, (u32, Vec<usize>)> = BTreeMap::new();
    for (member, input) in merged.values().enumerate() {
        for &name in &input.topics {
            if let Some(&count) = partition_counts.get(name).filter(|&&count| count > 0) {
                found
                    .entry(name)
                    .or_insert((count, Vec::new()))
                    .1
                    .push(member);
            }
        }
    }
    let mut first_id = 0;
    found
        .into_iter()
        .map(|(name, (count, subscribers))| {
            let topic = Topic {
                name,
                subscribers,
                first_id,
                count,
            };
            first_id += count as usize;
            topic
        })
        .collect()
}

/// Resolves previous-generation claims to at most one owner per partition.
///
/// A claim counts only if the partition still exists and the claimant still
/// subscribes to its topic. Stale data can have two members claim the same
/// partition; members are visited in id order and the first valid claim
/// wins, so the lowest member id keeps it and the others are treated as not
/// owning it.
fn valid_claims(
    merged: &BTreeMap<&str, Merged<'_>>,
    topics: &[Topic<'_>],
    partition_count: usize,
) -> Vec<Option<usize>> {
    let by_name: BTreeMap<&str, &Topic> = topics.iter().map(|t| (t.name, t)).collect();
    let mut owners = vec![None; partition_count];
    for (member, input) in merged.values().enumerate() {
        for (name, partition) in &input.previous {
            let Some(topic) = by_name.get(name.as_str()) else {
                continue;
            };
            if *partition >= topic.count || !input.topics.contains(name.as_str()) {
                continue;
            }
            owners[topic.first_id + *partition as usize].get_or_insert(member);
        }
    }
    owners
}

// ---------------------------------------------------------------------------
// Range and round-robin (Kafka-compatible)
// ---------------------------------------------------------------------------

/// Kafka's `RangeAssignor`: per topic, the subscribers in id order each take
/// a contiguous range, and the first `count % n` of them take one extra.
///
/// Returns one owner per partition id.
fn range(model: &Model) -> Vec<usize> {
    let mut owners = Vec::with_capacity(model.partitions.len());
    for topic in &model.topics {
        let subscribers = topic.subscribers.len();
        let count = topic.count as usize;
        let (base, extra) = (count / subscribers, count % subscribers);
        for (rank, &member) in topic.subscribers.iter().enumerate() {
            let len = base + usize::from(rank < extra);
            owners.resize(owners.len() + len, member);
        }
    }
    owners
}

/// Kafka's `RoundRobinAssignor`: all partitions in (topic, partition) order
/// are dealt to the members in id order from one cursor that keeps going
/// round, skipping members not subscribed to the partition's topic.
///
/// Returns one owner per partition id.
fn round_robin(model: &Model) -> Vec<usize> {
    let member_count = model.members.len();
    let mut cursor = 0;
    let mut owners = Vec::with_capacity(model.partitions.len());
    for &(topic, _) in &model.partitions {
        // Terminates: every assignable topic has at least one subscriber.
        let subscribers = &model.topics[topic].subscribers;
        while subscribers.binary_search(&cursor).is_err() {
            cursor = (cursor + 1) % member_count;
        }
        owners.push(cursor);
        cursor = (cursor + 1) % member_count;
    }
    owners
}

// ---------------------------------------------------------------------------
// Sticky
// ---------------------------------------------------------------------------

/// The sticky assignor, in four greedy steps:
///
/// 1. every partition stays with its valid previous owner;
/// 2. the others go, scarcest first (fewest eligible members), each to the
///    least-loaded eligible member;
/// 3. while some member holds a partition that a member with at least two
///    fewer partitions could take, the most-loaded such member hands one to
///    the least-loaded eligible one;
/// 4. when no direct move is left, look for a chain instead (A hands one to
///    B, B one to C, ... to a member with two fewer than A); apply the
///    shortest one found and go back to step 3.
///
/// Step 3 always takes from the heaviest member and gives to the lightest,
/// so with homogeneous subscriptions it ends balanced (max - min <= 1) and
/// only the excess moves: when a member leaves, step 2 spreads its
/// partitions over the lightest members and nothing else moves; when one
/// joins, it is the lightest throughout step 3 and the only receiver.
///
/// Step 4 only matters for heterogeneous subscriptions, where direct moves
/// can get stuck (say, at 7 against 15 partitions) depending on history.
/// With no chain left, the loads are optimal: this is the "no cost-reducing
/// path" condition for semi-matchings (Harvey, Ladner, Lovász and Tamir,
/// 2003), under which the sorted loads are the same whatever the previous
/// generation looked like.
///
/// Both steps terminate because every move or chain lowers the sum of
/// squared loads by at least two.
///
/// Returns one owner per partition id.
fn sticky(model: &Model) -> Vec<usize> {
    let classes = Classes::new(model);
    let class_of = |partition_id| classes.of_topic[model.topic_of(partition_id)];
    let mut balancer = Balancer::new(model.members.len(), &classes);
    let mut orphans = Vec::new();
    for (partition_id, previous) in model.previous.iter().enumerate() {
        match *previous {
            Some(owner) => {
                balancer.place(partition_id, owner, class_of(partition_id), Origin::Kept)
            }
            None => orphans.push(partition_id),
        }
    }
    balancer.sync_all();
    // Scarce partitions first: a partition only a few members can take
    // should get a say before flexible ones have filled those members up.
    orphans.sort_by_key(|&id| (classes.members[class_of(id)].len(), id));
    for partition_id in orphans {
        let class = class_of(partition_id);
        let member = balancer.least_loaded(class);
        balancer.place(partition_id, member, class, Origin::Fresh);
        balancer.sync(member);
    }
    loop {
        while let Some(step) = balancer.next_move() {
            balancer.apply(step, &model.previous);
        }
        let Some(chain) = balancer.improving_chain() else {
            break;
        };
        for step in chain {
            balancer.hand_over(step, &model.previous);
        }
        balancer.sync_all();
    }
    balancer.into_owners(model.partitions.len())
}

/// Topics grouped by their exact set of subscribers. Partitions of one class
/// can go to exactly the same members, so the balancer reasons per class
/// rather than per topic: with homogeneous subscriptions there is a single
/// class however many topics there are.
struct Classes {
    /// Class of each topic index.
    of_topic: Vec<usize>,
    /// Member indices of each class, ascending; never empty.
    members: Vec<Vec<usize>>,
}

impl Classes {
    fn new(model: &Model) -> Self {
        let mut index: BTreeMap<&[usize], usize> = BTreeMap::new();
        let mut members = Vec::new();
        let of_topic = model
            .topics
            .iter()
            .map(|topic| {
                *index.entry(&topic.subscribers).or_insert_with(|| {
                    members.push(topic.subscribers.clone());
                    members.len() - 1
                })
            })
            .collect();
        Classes { of_topic, members }
    }
}

/// Whether a member held a partition in the previous generation. `Fresh`
/// sorts first so that the balancer hands out partitions that are moving
/// this round anyway before it takes one from its previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Fresh,
    Kept,
}

/// One partition of `class` handed from member `from` to member `to`.
#[derive(Debug, Clone, Copy)]
struct Move {
    from: usize,
    to: usize,
    class: usize,
}

/// Who holds what, indexed so that "least-loaded member of a class" and
/// "most-loaded member" are cheap: `(load, member)` pairs in ordered sets
/// whose ties break by member index, i.e. by member id.
///
/// Updating a member's entries in the per-class sets costs O(c log M), c
/// being the number of classes it belongs to: 1 for homogeneous groups and
/// small in practice, but thousands for inputs with thousands of distinct
/// subscriber sets. So runs of changes to one member are indexed once, at
/// the end (see [`Balancer::sync`]).
struct Balancer {
    loads: Vec<usize>,
    /// `(load, member)` of every member in at least one class; always exact.
    by_load: BTreeSet<(usize, usize)>,
    /// Per class, `(indexed load, member)` of its members.
    class_loads: Vec<BTreeSet<(usize, usize)>>,
    /// The load each member has in `class_loads`. Equal to `loads` except
    /// during the initial placement, and for members at the maximum load
    /// while direct moves run (see [`Balancer::apply`]).
    indexed: Vec<usize>,
    /// Per member, the classes it belongs to, ascending.
    member_classes: Vec<Vec<usize>>,
    /// Per member, per class it holds partitions of: `(origin, partition id)`.
    holdings: Vec<BTreeMap<usize, BTreeSet<(Origin, usize)>>>,
    /// Per class, the members holding at least one of its partitions.
    holders: Vec<BTreeSet<usize>>,
}

impl Balancer {
    fn new(member_count: usize, classes: &Classes) -> Self {
        let mut member_classes = vec![Vec::new(); member_count];
        let mut class_loads = Vec::with_capacity(classes.members.len());
        for (class, members) in classes.members.iter().enumerate() {
            for &member in members {
                member_classes[member].push(class);
            }
            class_loads.push(members.iter().map(|&member| (0, member)).collect());
        }
        let by_load = (0..member_count)
            .filter(|&member| !member_classes[member].is_empty())
            .map(|member| (0, member))
            .collect();
        Balancer {
            loads: vec![0; member_count],
            by_load,
            class_loads,
            indexed: vec![0; member_count],
            member_classes,
            holdings: vec![BTreeMap::new(); member_count],
            holders: vec![BTreeSet::new(); classes.members.len()],
        }
    }

    /// The member of `class` with the fewest partitions, lowest id first.
    fn least_loaded(&self, class: usize) -> usize {
        let &(_, member) = self.class_loads[class]
            .first()
            .expect("invariant: every class has at least one member");
        debug_assert_eq!(self.indexed[member], self.loads[member]);
        member
    }

    /// Gives `member` a partition; its class entries wait for [`Self::sync`].
    fn place(&mut self, partition_id: usize, member: usize, class: usize, origin: Origin) {
        debug_assert!(self.member_classes[member].binary_search(&class).is_ok());
        let held = self.holdings[member].entry(class).or_default();
        let inserted = held.insert((origin, partition_id));
        debug_assert!(inserted, "partition {partition_id} placed twice");
        self.holders[class].insert(member);
        self.set_load(member, self.loads[member] + 1);
    }

    /// Removes one partition of `class` from `member`, fresh ones first;
    /// its class entries wait for [`Self::sync`].
    fn take(&mut self, member: usize, class: usize) -> Option<usize> {
        let held = self.holdings[member].get_mut(&class)?;
        let (_, partition_id) = held.pop_first()?;
        if held.is_empty() {
            self.holdings[member].remove(&class);
            self.holders[class].remove(&member);
        }
        self.set_load(member, self.loads[member] - 1);
        Some(partition_id)
    }

    fn set_load(&mut self, member: usize, load: usize) {
        let removed = self.by_load.remove(&(self.loads[member], member));
        debug_assert!(removed, "member {member} missing from the load order");
        self.by_load.insert((load, member));
        self.loads[member] = load;
    }

    /// Brings `member`'s entries in the per-class sets up to its load.
    fn sync(&mut self, member: usize) {
        let (old, new) = (self.indexed[member], self.loads[member]);
        if old == new {
            return;
        }
        for &class in &self.member_classes[member] {
            self.class_loads[class].remove(&(old, member));
            self.class_loads[class].insert((new, member));
        }
        self.indexed[member] = new;
    }

    fn sync_all(&mut self) {
        (0..self.loads.len()).for_each(|member| self.sync(member));
    }

    /// The move that relieves the most-loaded member able to give anything,
    /// toward the least-loaded member that can take from it; `None` once no
    /// member holds a partition that a member with two fewer could take.
    fn next_move(&self) -> Option<Move> {
        let &(floor, _) = self.by_load.first()?;
        for &(load, from) in self.by_load.iter().rev() {
            if load < floor + 2 {
                return None;
            }
            if let Some((to, class)) = self.lightest_taker(from, load) {
                return Some(Move { from, to, class });
            }
        }
        None
    }

    /// The least-loaded member, lowest id first, with at most `load - 2`
    /// partitions that can take one of `from`'s, and the class it can take.
    fn lightest_taker(&self, from: usize, load: usize) -> Option<(usize, usize)> {
        // The lightest member of all is the answer if it can take anything
        // from `from`, as it always can in a homogeneous group: one check
        // instead of one per class `from` holds.
        let &(lightest_load, lightest) = self.by_load.first()?;
        if lightest_load + 2 > load {
            return None;
        }
        if let Some(class) = self.first_shared_class(from, lightest) {
            return Some((lightest, class));
        }
        let candidates = self.holdings[from].keys().filter_map(|&class| {
            let &(to_load, to) = self.class_loads[class].first()?;
            (to_load + 2 <= load).then_some((to_load, to, class))
        });
        candidates.min().map(|(_, to, class)| (to, class))
    }

    /// The lowest class that `member` belongs to and `from` holds partitions
    /// of, walking whichever of the two lists is shorter.
    fn first_shared_class(&self, from: usize, member: usize) -> Option<usize> {
        let (held, classes) = (&self.holdings[from], &self.member_classes[member]);
        if held.len() < classes.len() {
            held.keys()
                .copied()
                .find(|class| classes.binary_search(class).is_ok())
        } else {
            classes
                .iter()
                .copied()
                .find(|class| held.contains_key(class))
        }
    }

    /// A chain of hand-overs from a member with `k + 2` or more partitions
    /// to one with `k` or fewer, for the lowest `k` that has one; `None`
    /// when no member's load can drop by one unless another's rises to at
    /// least as much, i.e. the loads are optimal.
    fn improving_chain(&self) -> Option<Vec<Move>> {
        let (&(floor, _), &(ceiling, _)) = (self.by_load.first()?, self.by_load.last()?);
        (floor..ceiling.saturating_sub(1)).find_map(|k| self.chain_down_to(k))
    }

    /// Breadth-first search backwards from every member with at most `k`
    /// partitions, through "holds a partition that this member could take",
    /// until it meets a member with at least `k + 2`: the shortest chain
    /// from there, so the fewest partitions move for the gain.
    fn chain_down_to(&self, k: usize) -> Option<Vec<Move>> {
        // next[x]: the member x hands a partition to, and of which class.
        let mut next: Vec<Option<(usize, usize)>> = vec![None; self.loads.len()];
        let mut seen_member = vec![false; self.loads.len()];
        let mut seen_class = vec![false; self.holders.len()];
        let light = self.by_load.iter().take_while(|&&(load, _)| load <= k);
        let mut queue: VecDeque<usize> = light.map(|&(_, member)| member).collect();
        queue.iter().for_each(|&member| seen_member[member] = true);
        while let Some(taker) = queue.pop_front() {
            for &class in &self.member_classes[taker] {
                if std::mem::replace(&mut seen_class[class], true) {
                    continue;
                }
                for &giver in &self.holders[class] {
                    if std::mem::replace(&mut seen_member[giver], true) {
                        continue;
                    }
                    next[giver] = Some((taker, class));
                    if self.loads[giver] >= k + 2 {
                        return Some(Self::follow(giver, &next));
                    }
                    queue.push_back(giver);
                }
            }
        }
        None
    }

    fn follow(start: usize, next: &[Option<(usize, usize)>]) -> Vec<Move> {
        let mut chain = Vec::new();
        let mut from = start;
        while let Some((to, class)) = next[from] {
            chain.push(Move { from, to, class });
            from = to;
        }
        chain
    }

    fn apply(&mut self, step: Move, previous: &[Option<usize>]) {
        debug_assert!(self.loads[step.to] + 2 <= self.loads[step.from]);
        self.hand_over(step, previous);
        self.sync(step.to);
        // Members are only read from the class sets as takers, which need
        // two partitions fewer than a giver, so a member with the maximum
        // load never qualifies and its entries can wait while it keeps that
        // load (the maximum never rises while direct moves run). A member
        // that must shed thousands of partitions, say the only member of
        // the previous generation, then pays for its classes once rather
        // than once per partition.
        let max_load = self.by_load.last().map(|&(load, _)| load);
        if max_load != Some(self.loads[step.from]) {
            self.sync(step.from);
        }
    }

    /// Moves one partition of `step.class` from `step.from` to `step.to`.
    fn hand_over(&mut self, step: Move, previous: &[Option<usize>]) {
        let partition_id = self
            .take(step.from, step.class)
            .expect("invariant: moves only name classes the giver holds");
        let origin = if previous[partition_id] == Some(step.to) {
            Origin::Kept
        } else {
            Origin::Fresh
        };
        self.place(partition_id, step.to, step.class, origin);
    }

    fn into_owners(self, partition_count: usize) -> Vec<usize> {
        const NONE: usize = usize::MAX;
        let mut owners = vec![NONE; partition_count];
        for (member, held) in self.holdings.iter().enumerate() {
            for &(_, partition_id) in held.values().flatten() {
                debug_assert_eq!(owners[partition_id], NONE);
                owners[partition_id] = member;
            }
        }
        assert!(
            owners.iter().all(|&owner| owner != NONE),
            "sticky assignor left a partition unassigned"
        );
        owners
    }
}

// ---------------------------------------------------------------------------
// Contract check
// ---------------------------------------------------------------------------

/// Checks the contract every assignor must meet, against the raw inputs:
/// every member has an entry with a sorted list, each partition of a
/// subscribed, existing topic is assigned exactly once and only to a
/// subscriber, and nothing else is assigned. Returns the first violation.
///
/// Run on every assignment in debug builds, and by the tests.
fn check_assignment(
    assignment: &Assignment,
    members: &[MemberInput<'_>],
    partition_counts: &BTreeMap<String, u32>,
) -> Result<(), String> {
    let mut subscriptions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for member in members {
        let topics = subscriptions.entry(member.member_id).or_default();
        topics.extend(member.topics.iter().map(String::as_str));
    }
    if !assignment
        .keys()
        .map(String::as_str)
        .eq(subscriptions.keys().copied())
    {
        return Err("assignment keys differ from the member ids".to_owned());
    }
    let mut seen = BTreeSet::new();
    for (member, list) in assignment {
        if !list.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(format!("{member}: list not strictly sorted: {list:?}"));
        }
        for (topic, partition) in list {
            let subscribed = subscriptions
                .get(member.as_str())
                .is_some_and(|topics| topics.contains(topic.as_str()));
            if !subscribed {
                return Err(format!("{member} got {topic}/{partition} unsubscribed"));
            }
            let exists = matches!(partition_counts.get(topic), Some(&count) if *partition < count);
            if !exists {
                return Err(format!("{member} got nonexistent {topic}/{partition}"));
            }
            if !seen.insert((topic.as_str(), *partition)) {
                return Err(format!("{topic}/{partition} assigned twice"));
            }
        }
    }
    // Everything seen is distinct and assignable, so equal counts mean
    // equal sets.
    let subscribed: BTreeSet<&str> = subscriptions.values().flatten().copied().collect();
    let expected: usize = subscribed
        .iter()
        .filter_map(|topic| partition_counts.get(*topic))
        .map(|&count| count as usize)
        .sum();
    if seen.len() != expected {
        return Err(format!("{} of {expected} partitions assigned", seen.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned member input, for building `MemberInput`s in tests.
    #[derive(Debug, Clone)]
    struct Spec {
        id: String,
        topics: Vec<String>,
        previous: Vec<(String, u32)>,
    }

    fn spec(id: &str, topics: &[&str]) -> Spec {
        Spec {
            id: id.to_owned(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            previous: Vec::new(),
        }
    }

    fn parts(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|&(t, p)| (t.to_owned(), p)).collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|&(t, n)| (t.to_owned(), n)).collect()
    }

    /// Runs an assignor and checks the common contract on the result.
    fn run(assignor: Assignor, specs: &[Spec], counts: &BTreeMap<String, u32>) -> Assignment {
        let inputs: Vec<MemberInput> = specs
            .iter()
            .map(|s| MemberInput {
                member_id: &s.id,
                topics: &s.topics,
                previous: &s.previous,
            })
            .collect();
        let assignment = assign(assignor, &inputs, counts);
        assert_eq!(check_assignment(&assignment, &inputs, counts), Ok(()));
        assignment
    }

    /// The same members, each claiming what it got in `assignment`.
    fn with_previous(specs: &[Spec], assignment: &Assignment) -> Vec<Spec> {
        let mut specs = specs.to_vec();
        for s in &mut specs {
            s.previous = assignment.get(&s.id).cloned().unwrap_or_default();
        }
        specs
    }

    /// Partition -> owner.
    fn owners(assignment: &Assignment) -> BTreeMap<(String, u32), String> {
        let mut owners = BTreeMap::new();
        for (member, list) in assignment {
            for tp in list {
                owners.insert(tp.clone(), member.clone());
            }
        }
        owners
    }

    fn sorted_loads(assignment: &Assignment) -> Vec<usize> {
        let mut loads: Vec<usize> = assignment.values().map(Vec::len).collect();
        loads.sort_unstable();
        loads
    }

    fn load_spread(assignment: &Assignment) -> usize {
        let loads = assignment.values().map(Vec::len);
        loads.clone().max().unwrap_or(0) - loads.min().unwrap_or(0)
    }

    // --- range -------------------------------------------------------------

    #[test]
    fn range_matches_kafka_documentation() {
        // RangeAssignor javadoc: C0, C1 on t0, t1 with 3 partitions each.
        let specs = [spec("C0", &["t0", "t1"]), spec("C1", &["t0", "t1"])];
        let got = run(Assignor::Range, &specs, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(
            got["C0"],
            parts(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)])
        );
        assert_eq!(got["C1"], parts(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn range_gives_extras_to_the_first_members() {
        let specs = [spec("b", &["t"]), spec("c", &["t"]), spec("a", &["t"])];
        let got = run(Assignor::Range, &specs, &counts(&[("t", 7)]));
        assert_eq!(got["a"], parts(&[("t", 0), ("t", 1), ("t", 2)]));
        assert_eq!(got["b"], parts(&[("t", 3), ("t", 4)]));
        assert_eq!(got["c"], parts(&[("t", 5), ("t", 6)]));
    }

    #[test]
    fn range_splits_each_topic_among_its_own_subscribers() {
        let specs = [spec("a", &["x"]), spec("b", &["x", "y"]), spec("c", &["y"])];
        let got = run(Assignor::Range, &specs, &counts(&[("x", 3), ("y", 2)]));
        assert_eq!(got["a"], parts(&[("x", 0), ("x", 1)]));
        assert_eq!(got["b"], parts(&[("x", 2), ("y", 0)]));
        assert_eq!(got["c"], parts(&[("y", 1)]));
    }

    // --- round-robin -------------------------------------------------------

    #[test]
    fn round_robin_matches_kafka_documentation_homogeneous() {
        // RoundRobinAssignor javadoc: C0, C1 on t0, t1 with 3 partitions each.
        let specs = [spec("C0", &["t0", "t1"]), spec("C1", &["t0", "t1"])];
        let got = run(
            Assignor::RoundRobin,
            &specs,
            &counts(&[("t0", 3), ("t1", 3)]),
        );
        assert_eq!(got["C0"], parts(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(got["C1"], parts(&[("t0", 1), ("t1", 0), ("t1", 2)]));
    }

    #[test]
    fn round_robin_matches_kafka_documentation_heterogeneous() {
        // RoundRobinAssignor javadoc: t0/1, t1/2, t2/3 partitions;
        // C0 on t0, C1 on t0 and t1, C2 on all three.
        let specs = [
            spec("C0", &["t0"]),
            spec("C1", &["t0", "t1"]),
            spec("C2", &["t0", "t1", "t2"]),
        ];
        let got = run(
            Assignor::RoundRobin,
            &specs,
            &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]),
        );
        assert_eq!(got["C0"], parts(&[("t0", 0)]));
        assert_eq!(got["C1"], parts(&[("t1", 0)]));
        assert_eq!(
            got["C2"],
            parts(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)])
        );
    }

    // --- sticky ------------------------------------------------------------

    #[test]
    fn sticky_fresh_group_is_balanced() {
        let specs: Vec<Spec> = ["a", "b", "c"].iter().map(|id| spec(id, &["t"])).collect();
        let got = run(Assignor::Sticky, &specs, &counts(&[("t", 10)]));
        let loads: Vec<usize> = got.values().map(Vec::len).collect();
        assert_eq!(loads, [4, 3, 3]);
    }

    #[test]
    fn sticky_matches_kip_54_heterogeneous_example() {
        // KIP-54: round-robin gives C2 four partitions and C1 one; sticky
        // manages 1/2/3, the best the subscriptions allow.
        let specs = [
            spec("C0", &["t0"]),
            spec("C1", &["t0", "t1"]),
            spec("C2", &["t0", "t1", "t2"]),
        ];
        let topics = counts(&[("t0", 1), ("t1", 2), ("t2", 3)]);
        let got = run(Assignor::Sticky, &specs, &topics);
        assert_eq!(got["C0"], parts(&[("t0", 0)]));
        assert_eq!(got["C1"], parts(&[("t1", 0), ("t1", 1)]));
        assert_eq!(got["C2"], parts(&[("t2", 0), ("t2", 1), ("t2", 2)]));

        // C0 leaves: its one partition goes to C1, nothing else moves.
        let next = with_previous(&specs[1..], &got);
        let again = run(Assignor::Sticky, &next, &topics);
        assert_eq!(again["C1"], parts(&[("t0", 0), ("t1", 0), ("t1", 1)]));
        assert_eq!(again["C2"], got["C2"]);
    }

    #[test]
    fn sticky_follows_chains_where_direct_moves_are_stuck() {
        // B holds all of x, C all of y; A can only take x. Direct moves get
        // stuck at 1/2/3 (C can't give to A); the chain C -> B -> A fixes it.
        let mut specs = vec![spec("A", &["x"]), spec("B", &["x", "y"]), spec("C", &["y"])];
        specs[1].previous = parts(&[("x", 0), ("x", 1)]);
        specs[2].previous = parts(&[("y", 0), ("y", 1), ("y", 2), ("y", 3)]);
        let got = run(Assignor::Sticky, &specs, &counts(&[("x", 2), ("y", 4)]));
        assert_eq!(got["A"], parts(&[("x", 0), ("x", 1)]));
        assert_eq!(got["B"].len(), 2);
        assert_eq!(got["C"].len(), 2);
        assert!(got["C"].iter().all(|tp| specs[2].previous.contains(tp)));
    }

    #[test]
    fn sticky_member_leaving_moves_only_its_partitions() {
        let specs: Vec<Spec> = ["a", "b", "c"].iter().map(|id| spec(id, &["t"])).collect();
        let topics = counts(&[("t", 9)]);
        let first = run(Assignor::Sticky, &specs, &topics);
        let remaining = with_previous(&[specs[0].clone(), specs[2].clone()], &first);
        let second = run(Assignor::Sticky, &remaining, &topics);
        for id in ["a", "c"] {
            assert!(first[id].iter().all(|tp| second[id].contains(tp)));
        }
        assert_eq!(load_spread(&second), 1);
    }

    #[test]
    fn sticky_member_joining_takes_only_the_excess() {
        let mut specs: Vec<Spec> = ["a", "b", "c"].iter().map(|id| spec(id, &["t"])).collect();
        let topics = counts(&[("t", 12)]);
        let first = run(Assignor::Sticky, &specs, &topics);
        specs = with_previous(&specs, &first);
        specs.push(spec("d", &["t"]));
        let second = run(Assignor::Sticky, &specs, &topics);
        for id in ["a", "b", "c"] {
            assert_eq!(second[id].len(), 3);
            assert!(second[id].iter().all(|tp| first[id].contains(tp)));
        }
        assert_eq!(second["d"].len(), 3);
    }

    #[test]
    fn sticky_conflicting_claims_go_to_the_lowest_member_id() {
        let mut specs = vec![spec("b", &["t"]), spec("a", &["t"])];
        specs[0].previous = parts(&[("t", 0), ("t", 1)]);
        specs[1].previous = parts(&[("t", 1)]);
        let got = run(Assignor::Sticky, &specs, &counts(&[("t", 2)]));
        assert_eq!(got["a"], parts(&[("t", 1)]));
        assert_eq!(got["b"], parts(&[("t", 0)]));
    }

    #[test]
    fn sticky_ignores_stale_claims() {
        let mut specs = vec![spec("a", &["t"]), spec("b", &["t", "u"])];
        // Out of range, unsubscribed, deleted topic, and a repeated claim.
        specs[0].previous = parts(&[("t", 7), ("u", 0), ("gone", 0), ("t", 0), ("t", 0)]);
        specs[1].previous = parts(&[("u", 0), ("u", 1)]);
        let got = run(Assignor::Sticky, &specs, &counts(&[("t", 2), ("u", 2)]));
        // b keeps u; a keeps t/0 and, being lighter, also gets t/1.
        assert_eq!(got["a"], parts(&[("t", 0), ("t", 1)]));
        assert_eq!(got["b"], parts(&[("u", 0), ("u", 1)]));
    }

    #[test]
    fn sticky_rebalances_away_from_an_overloaded_previous_owner() {
        let mut specs = vec![spec("a", &["t"]), spec("b", &["t"]), spec("c", &["t"])];
        specs[2].previous = (0..10).map(|p| ("t".to_owned(), p)).collect();
        let got = run(Assignor::Sticky, &specs, &counts(&[("t", 10)]));
        assert_eq!(load_spread(&got), 1);
        // c keeps as many of its partitions as balance allows.
        assert_eq!(got["c"].len(), 4);
    }

    // --- all assignors -----------------------------------------------------

    #[test]
    fn unknown_empty_and_repeated_inputs_are_tolerated() {
        let mut specs = vec![
            spec("z", &["t", "t", "unknown", "empty"]),
            spec("y", &[]),
            spec("z", &["u"]),
        ];
        specs[2].previous = parts(&[("u", 0)]);
        let topics = counts(&[("t", 3), ("u", 1), ("empty", 0), ("unused", 4)]);
        for assignor in [Assignor::Sticky, Assignor::Range, Assignor::RoundRobin] {
            let got = run(assignor, &specs, &topics);
            assert_eq!(got["y"], Vec::new());
            assert_eq!(got["z"], parts(&[("t", 0), ("t", 1), ("t", 2), ("u", 0)]));
        }
    }

    #[test]
    fn no_members_means_an_empty_assignment() {
        for assignor in [Assignor::Sticky, Assignor::Range, Assignor::RoundRobin] {
            assert!(run(assignor, &[], &counts(&[("t", 3)])).is_empty());
        }
    }

    #[test]
    fn sticky_scales_to_a_thousand_members() {
        let topics: BTreeMap<String, u32> = (0..100).map(|t| (format!("t{t:03}"), 100)).collect();
        let names: Vec<String> = topics.keys().cloned().collect();
        // Half the members subscribe to everything, half to every third topic.
        let mut specs: Vec<Spec> = (0..1000)
            .map(|m| Spec {
                id: format!("m{m:04}"),
                topics: names
                    .iter()
                    .skip(m % 2)
                    .step_by(1 + 2 * (m % 2))
                    .cloned()
                    .collect(),
                previous: Vec::new(),
            })
            .collect();
        let first = run(Assignor::Sticky, &specs, &topics);
        specs = with_previous(&specs, &first);
        specs.push(Spec {
            id: "new".to_owned(),
            topics: names.clone(),
            previous: Vec::new(),
        });
        let second = run(Assignor::Sticky, &specs, &topics);
        // Everything that moved went to the newcomer.
        let (old, new) = (owners(&first), owners(&second));
        let moved = old.iter().filter(|(tp, m)| new[*tp] != **m);
        assert!(moved.clone().all(|(tp, _)| new[tp] == "new"));
        assert_eq!(moved.count(), second["new"].len());
        assert!(second["new"].len() >= 6);

        // One member owned everything before (the group had scaled up from
        // one): it ends as balanced as a fresh group.
        specs.pop();
        specs.iter_mut().for_each(|s| s.previous.clear());
        specs[1].previous = old.into_keys().collect();
        let third = run(Assignor::Sticky, &specs, &topics);
        assert_eq!(sorted_loads(&third), sorted_loads(&first));
    }

    // --- properties --------------------------------------------------------

    const ASSIGNORS: [Assignor; 3] = [Assignor::Sticky, Assignor::Range, Assignor::RoundRobin];

    /// A random group: partition counts for topics `t0..`, and per member the
    /// topics it subscribes to and the partitions it claims, by topic index.
    /// Index `counts.len()` names a topic that does not exist; claims may be
    /// out of range, unsubscribed or shared with other members.
    #[derive(Debug, Clone)]
    struct Scenario {
        counts: Vec<u32>,
        members: Vec<(Vec<usize>, Claims)>,
    }

    /// Previous-generation claims as `(topic index, partition)`.
    type Claims = Vec<(usize, u32)>;

    impl Scenario {
        fn counts(&self) -> BTreeMap<String, u32> {
            let named = self.counts.iter().enumerate();
            named.map(|(t, &n)| (format!("t{t}"), n)).collect()
        }

        fn specs(&self) -> Vec<Spec> {
            let specs = self.members.iter().enumerate();
            specs
                .map(|(m, (topics, claims))| Spec {
                    id: format!("m{m}"),
                    topics: topics.iter().map(|t| format!("t{t}")).collect(),
                    previous: claims.iter().map(|&(t, p)| (format!("t{t}"), p)).collect(),
                })
                .collect()
        }
    }

    fn topic_counts() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(1u32..=12, 1..=4)
    }

    fn claims(topic_count: usize) -> impl Strategy<Value = Claims> {
        prop::collection::vec((0..=topic_count, 0u32..14), 0..=8)
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        topic_counts().prop_flat_map(|counts| {
            let n = counts.len();
            let member = (prop::collection::vec(0..=n, 0..=5), claims(n));
            prop::collection::vec(member, 1..=8).prop_map(move |members| Scenario {
                counts: counts.clone(),
                members,
            })
        })
    }

    /// Like [`scenario`], but every member subscribes to the same topics.
    fn homogeneous(members: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Scenario> {
        topic_counts().prop_flat_map(move |counts| {
            let n = counts.len();
            let topics = prop::collection::vec(0..=n, 1..=5);
            let claims = prop::collection::vec(claims(n), members.clone());
            (topics, claims).prop_map(move |(topics, claims)| Scenario {
                counts: counts.clone(),
                members: claims.into_iter().map(|c| (topics.clone(), c)).collect(),
            })
        })
    }

    proptest! {
        #[test]
        fn every_assignor_covers_each_partition_once(s in scenario()) {
            let specs = s.specs();
            for assignor in ASSIGNORS {
                // `run` checks coverage and eligibility; determinism too:
                let shuffled: Vec<Spec> = specs.iter().rev().cloned().collect();
                prop_assert_eq!(
                    run(assignor, &specs, &s.counts()),
                    run(assignor, &shuffled, &s.counts())
                );
            }
        }

        #[test]
        fn range_gives_each_subscriber_a_fair_contiguous_share(s in scenario()) {
            let got = run(Assignor::Range, &s.specs(), &s.counts());
            for (topic, count) in s.counts() {
                let shares: Vec<Vec<u32>> = got.values()
                    .map(|list| list.iter().filter(|(t, _)| *t == topic).map(|&(_, p)| p).collect())
                    .filter(|share: &Vec<u32>| !share.is_empty())
                    .collect();
                for share in &shares {
                    prop_assert!(share.windows(2).all(|w| w[1] == w[0] + 1));
                }
                let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
                prop_assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
                prop_assert!(sizes.iter().sum::<usize>() == count as usize || sizes.is_empty());
            }
        }

        #[test]
        fn homogeneous_sticky_and_round_robin_are_balanced(s in homogeneous(1..=8)) {
            for assignor in [Assignor::Sticky, Assignor::RoundRobin] {
                prop_assert!(load_spread(&run(assignor, &s.specs(), &s.counts())) <= 1);
            }
        }

        #[test]
        fn sticky_leaves_no_improving_move(s in scenario()) {
            let specs = s.specs();
            let got = run(Assignor::Sticky, &specs, &s.counts());
            let subscribed = |id: &str, topic: &String| {
                specs.iter().any(|m| m.id == id && m.topics.contains(topic))
            };
            for (from, list) in &got {
                for (to, other) in &got {
                    if list.len() >= other.len() + 2 {
                        prop_assert!(!list.iter().any(|(t, _)| subscribed(to, t)),
                            "{} ({}) could give to {} ({})", from, list.len(), to, other.len());
                    }
                }
            }
        }

        #[test]
        fn sticky_loads_do_not_depend_on_history(s in scenario()) {
            // Optimal loads are unique up to order, so a group with stale or
            // lopsided history ends exactly as balanced as a fresh one.
            let fresh: Vec<Spec> = s.specs().into_iter()
                .map(|spec| Spec { previous: Vec::new(), ..spec })
                .collect();
            prop_assert_eq!(
                sorted_loads(&run(Assignor::Sticky, &s.specs(), &s.counts())),
                sorted_loads(&run(Assignor::Sticky, &fresh, &s.counts()))
            );
        }

        #[test]
        fn sticky_is_a_fixed_point(s in scenario()) {
            let got = run(Assignor::Sticky, &s.specs(), &s.counts());
            let again = run(Assignor::Sticky, &with_previous(&s.specs(), &got), &s.counts());
            prop_assert_eq!(got, again);
        }

        #[test]
        fn sticky_leave_moves_only_the_leavers_partitions(
            s in homogeneous(2..=8),
            leaver in any::<prop::sample::Index>(),
        ) {
            let specs = s.specs();
            let first = run(Assignor::Sticky, &specs, &s.counts());
            let leaver = leaver.index(specs.len());
            let mut remaining = with_previous(&specs, &first);
            let gone = remaining.remove(leaver).id;
            let second = run(Assignor::Sticky, &remaining, &s.counts());
            let new_owners = owners(&second);
            let moved: Vec<String> = owners(&first)
                .into_iter()
                .filter(|(tp, m)| new_owners[tp] != *m)
                .map(|(_, previous_owner)| previous_owner)
                .collect();
            prop_assert!(moved.iter().all(|previous_owner| *previous_owner == gone));
            prop_assert_eq!(moved.len(), first[&gone].len());
            prop_assert!(load_spread(&second) <= 1);
        }

        #[test]
        fn sticky_join_moves_only_to_the_new_member(
            s in homogeneous(1..=7),
            slot in any::<prop::sample::Index>(),
        ) {
            // Even ids for the old members, an odd one for the newcomer, so
            // it can sort anywhere among them.
            let mut specs = s.specs();
            for (m, spec) in specs.iter_mut().enumerate() {
                spec.id = format!("m{:02}", 2 * m);
            }
            let first = run(Assignor::Sticky, &specs, &s.counts());
            let newcomer = format!("m{:02}", 2 * slot.index(specs.len() + 1) + 1);
            let mut joined = with_previous(&specs, &first);
            joined.push(Spec {
                id: newcomer.clone(),
                topics: specs[0].topics.clone(),
                previous: Vec::new(),
            });
            let second = run(Assignor::Sticky, &joined, &s.counts());

            let new_owners = owners(&second);
            let mut moved = 0;
            for (tp, old) in owners(&first) {
                if new_owners[&tp] != old {
                    prop_assert_eq!(&new_owners[&tp], &newcomer);
                    moved += 1;
                }
            }
            let total = new_owners.len();
            prop_assert_eq!(moved, second[&newcomer].len());
            // The minimum: the newcomer's floor share; the ceil slots stay
            // with old members, who already hold them.
            prop_assert_eq!(moved, total / joined.len());
            prop_assert!(load_spread(&second) <= 1);
        }
    }
}
