//! One name table per enum: [`named_enum!`] declares a value-only enum whose CLI/configuration
//! names are written once and shared by clap (`ValueEnum`, so `--help` lists the choices), serde,
//! `Display`, `FromStr` and `name()`. Older spellings can be kept as aliases (accepted when
//! reading, never written).

/// `named_enum! { /// doc  pub enum Kind ("what it is") { /// doc  Variant = "name" | "alias", ... } }`
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $name:literal $(| $alias:literal)*,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
        $vis enum $ty {
            $($(#[$vmeta])* #[value(name = $name $(, alias = $alias)*)] $variant,)+
        }

        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];
            /// Every name, in declaration order.
            pub const NAMES: [&'static str; [$($name),+].len()] = [$($name),+];

            /// The CLI/configuration name.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> anyhow::Result<Self> {
                match s {
                    $($name $(| $alias)* => Ok($ty::$variant),)+
                    _ => anyhow::bail!("unknown {} '{s}' (expected one of: {})", $what, $ty::NAMES.join(", ")),
                }
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|_| serde::de::Error::unknown_variant(&s, &$ty::NAMES))
            }
        }
    };
}
pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        enum Fruit ("fruit") {
            /// An apple.
            Apple = "apple" | "pomme",
            Pear = "pear",
        }
    }

    #[test]
    fn one_name_serves_every_reader_and_aliases_only_read() {
        assert_eq!("pomme".parse::<Fruit>().unwrap(), Fruit::Apple);
        assert_eq!(Fruit::Apple.to_string(), "apple");
        assert_eq!(serde_json::to_string(&Fruit::Pear).unwrap(), "\"pear\"");
        assert_eq!(serde_json::from_str::<Fruit>("\"pomme\"").unwrap(), Fruit::Apple);
        let e = "kiwi".parse::<Fruit>().unwrap_err().to_string();
        assert_eq!(e, "unknown fruit 'kiwi' (expected one of: apple, pear)");
        use clap::ValueEnum;
        assert!(Fruit::from_str("pomme", false).is_ok());
        assert_eq!(Fruit::value_variants(), &Fruit::ALL);
    }
}
