//! MovieLens readers: ml-100k (`u.item` + `u.data`) and ml-latest / ml-latest-small / ml-25m
//! (`movies.csv` + `ratings.csv`). The format is recognized from the files in the folder.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::store::{EventKind, ImportBatch, ImportEvent, ItemRow};

/// Reads a MovieLens folder into a batch ready for [`crate::store::Store::import`].
pub fn read(folder: &Path, progress: bool) -> anyhow::Result<ImportBatch> {
    let Dataset { items, events } = open(folder, progress)?;
    let events = events
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok(ImportBatch { items, events })
}

/// A MovieLens folder opened for import: its items, and its events read as they are taken
/// (ml-latest's ratings.csv is 650 MB at 25M ratings; ml-100k is read whole).
pub struct Dataset {
    pub items: Vec<ItemRow>,
    pub events: Box<dyn Iterator<Item = Result<ImportEvent, String>> + Send>,
}

/// Opens a MovieLens folder, recognizing its format from the files in it.
pub fn open(folder: &Path, progress: bool) -> anyhow::Result<Dataset> {
    if !folder.is_dir() {
        bail!("{}: no such folder", folder.display());
    }
    if folder.join("u.data").exists() && folder.join("u.item").exists() {
        let items = read_100k_items(&folder.join("u.item"))?;
        let events = read_ratings(&folder.join("u.data"), progress)?;
        Ok(Dataset {
            items,
            events: Box::new(events.into_iter().map(Ok)),
        })
    } else if folder.join("ratings.csv").exists() && folder.join("movies.csv").exists() {
        open_latest(folder, progress)
    } else {
        bail!(
            "{} holds neither ml-100k files (u.data, u.item) nor ml-latest files (ratings.csv, movies.csv)",
            folder.display()
        )
    }
}

fn bar(len: u64, what: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `u.item` is Latin-1: every byte is the code point of the same value.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Reads an ml-100k `u.item` file (Latin-1, `|`-separated, one 0/1 column per genre). Genre
/// names come from `u.genre` beside it, or the published list when that file is absent.
pub fn read_100k_items(path: &Path) -> anyhow::Result<Vec<ItemRow>> {
    let genres = read_100k_genres(&path.with_file_name("u.genre"))?;
    let item_bytes =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut items = Vec::new();
    for (number, line) in item_bytes.split(|&b| b == b'\n').enumerate() {
        let line = latin1(line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() < 5 + genres.len() {
            bail!(
                "u.item line {}: expected {} fields, found {}",
                number + 1,
                5 + genres.len(),
                fields.len()
            );
        }
        let tags = fields[5..5 + genres.len()]
            .iter()
            .zip(&genres)
            .filter(|(flag, _)| flag.trim() == "1")
            .map(|(_, genre)| genre.clone())
            .collect();
        items.push(ItemRow {
            external_id: fields[0].to_string(),
            title: fields[1].to_string(),
            tags,
        });
    }
    Ok(items)
}

/// Reads ratings in `u.data` format: user, item, rating, timestamp per line, separated by
/// tabs or spaces.
pub fn read_ratings(path: &Path, progress: bool) -> anyhow::Result<Vec<ImportEvent>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let bar = bar(file.metadata()?.len(), "ratings", progress);
    let latest = latest_timestamp();
    let mut events = Vec::new();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    for (number, line) in std::io::BufReader::new(bar.wrap_read(file))
        .lines()
        .enumerate()
    {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [user, item, rating, timestamp] = fields[..] else {
            bail!(
                "{name} line {}: expected user, item, rating, timestamp",
                number + 1
            );
        };
        events.push(
            rating_event(user, item, rating, timestamp, latest)
                .with_context(|| format!("{name} line {}", number + 1))?,
        );
    }
    bar.finish_and_clear();
    Ok(events)
}

/// `u.genre`: `name|id` lines, in column order of `u.item`. Falls back to the published list.
fn read_100k_genres(path: &Path) -> anyhow::Result<Vec<String>> {
    if !path.exists() {
        return Ok([
            "unknown",
            "action",
            "adventure",
            "animation",
            "children's",
            "comedy",
            "crime",
            "documentary",
            "drama",
            "fantasy",
            "film-noir",
            "horror",
            "musical",
            "mystery",
            "romance",
            "sci-fi",
            "thriller",
            "war",
            "western",
        ]
        .map(String::from)
        .to_vec());
    }
    let text = latin1(&std::fs::read(path)?);
    let mut genres: Vec<(usize, String)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, id) = line
            .rsplit_once('|')
            .with_context(|| format!("u.genre: bad line {line:?}"))?;
        genres.push((id.trim().parse()?, name.to_lowercase()));
    }
    genres.sort();
    Ok(genres.into_iter().map(|(_, name)| name).collect())
}

/// The latest timestamp an import takes: what the API takes (`events::MAX_FUTURE_SECS`). A
/// file in milliseconds or nanoseconds would otherwise store dates centuries ahead, which the
/// users' histories cannot even hold (`histories.rs`).
fn latest_timestamp() -> u64 {
    crate::store::unix_now() + crate::events::MAX_FUTURE_SECS
}

fn rating_event(
    user: &str,
    item: &str,
    rating: &str,
    timestamp: &str,
    latest: u64,
) -> anyhow::Result<ImportEvent> {
    let value: f32 = rating
        .trim()
        .parse()
        .with_context(|| format!("rating {rating:?} is not a number"))?;
    if !value.is_finite() || !(0.0..=10.0).contains(&value) {
        bail!("rating {value} is out of range");
    }
    let timestamp: u64 = timestamp
        .trim()
        .parse()
        .with_context(|| format!("timestamp {timestamp:?} is not an integer"))?;
    if timestamp > latest {
        bail!("timestamp {timestamp} is more than a day in the future (Unix seconds expected)");
    }
    Ok(ImportEvent {
        user: user.trim().to_string(),
        item: item.trim().to_string(),
        kind: EventKind::Rate,
        value,
        timestamp,
    })
}

fn open_latest(folder: &Path, progress: bool) -> anyhow::Result<Dataset> {
    let mut items = Vec::new();
    let mut movies =
        csv::Reader::from_path(folder.join("movies.csv")).context("cannot read movies.csv")?;
    for (number, record) in movies.records().enumerate() {
        let record = record.with_context(|| format!("movies.csv record {}", number + 1))?;
        let (Some(id), Some(title), Some(genres)) = (record.get(0), record.get(1), record.get(2))
        else {
            bail!(
                "movies.csv record {}: expected movieId,title,genres",
                number + 1
            );
        };
        let tags = genres
            .split('|')
            .filter(|g| !g.is_empty() && *g != "(no genres listed)")
            .map(str::to_lowercase)
            .collect();
        items.push(ItemRow {
            external_id: id.to_string(),
            title: title.to_string(),
            tags,
        });
    }
    let path = folder.join("ratings.csv");
    let file = std::fs::File::open(&path).context("cannot open ratings.csv")?;
    // The bar counts the bytes read, and stays on the terminal at 100% when done.
    let bar = bar(file.metadata()?.len(), "ratings", progress);
    let latest = latest_timestamp();
    let ratings = csv::Reader::from_reader(bar.wrap_read(file));
    let events = ratings
        .into_records()
        .enumerate()
        .map(move |(number, record)| {
            (|| {
                let record = record?;
                let (Some(user), Some(item), Some(rating), Some(timestamp)) =
                    (record.get(0), record.get(1), record.get(2), record.get(3))
                else {
                    bail!("expected userId,movieId,rating,timestamp");
                };
                rating_event(user, item, rating, timestamp, latest)
            })()
            .map_err(|error| format!("ratings.csv record {}: {error:#}", number + 1))
        });
    Ok(Dataset {
        items,
        // Parsed on a thread of its own while the store inserts.
        events: Box::new(super::read_ahead::read_ahead(events)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_100k_format_with_latin1_titles_and_genres() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("u.genre"),
            "unknown|0\nAction|1\nComedy|2\n\n",
        )
        .unwrap();
        let mut item = b"1|Caf\xe9 Society (1995)|01-Jan-1995||http://x|0|1|1\n".to_vec();
        item.extend_from_slice(b"2|Other (1996)|01-Jan-1996||http://y|1|0|0\n");
        std::fs::write(dir.path().join("u.item"), item).unwrap();
        std::fs::write(
            dir.path().join("u.data"),
            "7\t1\t5\t881250949\n8\t2\t3\t881250950\n",
        )
        .unwrap();
        let batch = read(dir.path(), false).unwrap();
        assert_eq!(batch.items[0].title, "Café Society (1995)");
        assert_eq!(
            batch.items[0].tags,
            vec!["action".to_string(), "comedy".to_string()]
        );
        assert_eq!(batch.items[1].tags, vec!["unknown".to_string()]);
        assert_eq!(batch.events.len(), 2);
        assert_eq!(
            (
                batch.events[0].user.as_str(),
                batch.events[0].value,
                batch.events[0].timestamp
            ),
            ("7", 5.0, 881250949)
        );
    }

    #[test]
    fn reads_latest_csv_format_with_quoted_titles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("movies.csv"),
            "movieId,title,genres\n1,\"American President, The (1995)\",Comedy|Drama|Romance\n2,X,(no genres listed)\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("ratings.csv"),
            "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n",
        )
        .unwrap();
        let batch = read(dir.path(), false).unwrap();
        assert_eq!(batch.items[0].title, "American President, The (1995)");
        assert_eq!(batch.items[0].tags, vec!["comedy", "drama", "romance"]);
        assert!(batch.items[1].tags.is_empty());
        assert_eq!(batch.events[0].value, 4.5);
    }

    #[test]
    fn rejects_bad_ratings_and_unknown_folders() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read(dir.path(), false)
                .unwrap_err()
                .to_string()
                .contains("neither")
        );
        std::fs::write(
            dir.path().join("movies.csv"),
            "movieId,title,genres\n1,A,Drama\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("ratings.csv"),
            "userId,movieId,rating,timestamp\n1,1,NaN,1\n",
        )
        .unwrap();
        assert!(format!("{:#}", read(dir.path(), false).unwrap_err()).contains("record 1"));
        // Milliseconds for seconds: centuries ahead, refused, not stored.
        std::fs::write(
            dir.path().join("ratings.csv"),
            "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,1,4.0,964982703000\n",
        )
        .unwrap();
        let error = format!("{:#}", read(dir.path(), false).unwrap_err());
        assert!(
            error.contains("record 2") && error.contains("in the future"),
            "{error}"
        );
    }
}
